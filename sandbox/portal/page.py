"""The sandbox's read-only HTML page: what the portal holds, for a person to look at.

Server-rendered, no JavaScript. It needs no token (it is the sandbox's own page), so it never shows
more of an anonymised contact than its id and the word "anonymised".
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from sandbox.portal.store import Store

PAGE_SIZE = 50

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
.archived { color: #888; }
nav a { margin-right: 1rem; }
"""


def _cell(value: Any) -> str:
    return "" if value is None else escape(str(value))


def _address(street: Any, record: dict[str, Any]) -> str:
    """A street with the property's (or contact's) postal code and city."""
    parts = [street, " ".join(p for p in (record.get("postalCode"), record.get("city")) if p)]
    return escape(", ".join(p for p in parts if p))


def _flag(record: dict[str, Any]) -> str:
    return "archived" if record.get("archived") else "active"


def _properties(records: list[dict[str, Any]]) -> str:
    rows = []
    for r in records:
        addresses = "<br>".join(_address(a.get("street"), r) for a in r.get("addresses") or [])
        rows.append(
            f'<tr class="{_flag(r)}"><td>{_cell(r["id"])}</td><td>{_cell(r.get("name"))}</td>'
            f"<td>{addresses}</td><td>{_flag(r)}</td><td>{_cell(r.get('updatedAt'))}</td></tr>"
        )
    head = "<tr><th>id</th><th>name</th><th>addresses</th><th>state</th><th>updated</th></tr>"
    return f"<h2>Properties</h2><table>{head}{''.join(rows)}</table>"


def _units(records: list[dict[str, Any]]) -> str:
    rows = []
    for r in records:
        rows.append(
            f'<tr class="{_flag(r)}"><td>{_cell(r["id"])}</td><td>{_cell(r.get("propertyId"))}</td>'
            f"<td>{_cell(r.get('name'))}</td><td>{_cell(r.get('type'))}</td><td>{_cell(r.get('floor'))}</td>"
            f"<td>{_flag(r)}</td></tr>"
        )
    head = "<tr><th>id</th><th>property</th><th>name</th><th>type</th><th>floor</th><th>state</th></tr>"
    return f"<h2>Units</h2><table>{head}{''.join(rows)}</table>"


def _contacts(records: list[dict[str, Any]]) -> str:
    rows = []
    for r in records:
        if r.get("anonymised"):
            rows.append(
                f'<tr class="archived"><td>{_cell(r["id"])}</td><td colspan="4">anonymised</td>'
                "<td>archived</td></tr>"
            )
            continue
        name = " ".join(p for p in (r.get("firstName"), r.get("lastName")) if p) or ""
        if r.get("companyName"):
            name = f"{name} ({r['companyName']})" if name else r["companyName"]
        contracts = "<br>".join(
            escape(
                f"{c.get('type')} {c.get('propertyId')}"
                + (f" / {c['unitId']}" if c.get("unitId") else "")
                + f" from {c.get('startDate') or '?'}"
                + (f" to {c['endDate']}" if c.get("endDate") else "")
            )
            for c in r.get("contracts") or []
        )
        portal = "yes" if r.get("portalUser") else "no"
        rows.append(
            f'<tr class="{_flag(r)}"><td>{_cell(r["id"])}</td><td>{_cell(name)}</td>'
            f"<td>{_cell(r.get('email'))}</td><td>{portal}</td><td>{contracts}</td><td>{_flag(r)}</td></tr>"
        )
    head = (
        "<tr><th>id</th><th>name</th><th>e-mail</th><th>portal user</th><th>contracts</th><th>state</th></tr>"
    )
    return f"<h2>Contacts</h2><table>{head}{''.join(rows)}</table>"


def render_page(store: Store, page: int) -> str:
    """Page ``page`` (50 records of each collection, archived ones included) as an HTML document."""
    sections = []
    more = False
    for entity, render in (("properties", _properties), ("units", _units), ("contacts", _contacts)):
        bodies, has_more = store.page(entity, page, PAGE_SIZE, include_archived=True)
        more = more or has_more
        sections.append(render([json.loads(b) for b in bodies]))
    counts = ", ".join(f"{e}: {store.count(e)['total']}" for e in ("properties", "units", "contacts"))
    nav = []
    if page > 1:
        nav.append(f'<a href="/?page={page - 1}">&larr; page {page - 1}</a>')
    if more:
        nav.append(f'<a href="/?page={page + 1}">page {page + 1} &rarr;</a>')
    nav_html = f"<nav>{''.join(nav)}</nav>"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Portal sandbox, page {page}</title><style>{_STYLE}</style></head><body>"
        f"<h1>Portal sandbox</h1><p>Read-only view, page {page} ({PAGE_SIZE} per collection). "
        f'Records: {escape(counts)}. API: <a href="/docs">/docs</a>.</p>'
        f"{nav_html}{''.join(sections)}{nav_html}</body></html>"
    )


def render_property(record: dict[str, Any]) -> str:
    """One property as the API shows it (what its ``appLink`` opens), as an HTML document."""
    addresses = "".join(
        f"<li>{_address(a.get('street'), record)}: units {escape(', '.join(a.get('units') or [])) or 'none'}</li>"
        for a in record.get("addresses") or []
    )
    caretakers = "".join(
        f"<li>{_cell(r.get('roleName'))}: {_cell(r.get('contactName'))} ({_cell(r.get('roleType'))})</li>"
        for r in record.get("responsibilities") or []
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_cell(record.get('name'))}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{_cell(record.get('name'))}</h1><p>Property {_cell(record['id'])}, {_flag(record)}.</p>"
        f"<h2>Addresses</h2><ul>{addresses}</ul><h2>Responsibilities</h2><ul>{caretakers or '<li>none</li>'}</ul>"
        '<p><a href="/">All records</a></p></body></html>'
    )
