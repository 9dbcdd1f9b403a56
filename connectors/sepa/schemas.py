"""XSD validation of SEPA and camt files, streaming so memory stays flat for any file size.

Why streaming: ``XMLSchema.validate(tree)`` needs the whole document as a tree (about 1 GB for a
million transactions). A parser that carries the schema validates while it reads, and ``iterparse``
lets us drop every transaction once it has been seen, so a file of any size is validated (and its
control sums re-counted) with a few megabytes.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import IO, Any, Literal

from lxml import etree

from connectors.sepa.errors import SepaValidationError

XSD_DIR = Path(__file__).resolve().parent / "xsd"
_NAMESPACE_IN_MESSAGE = re.compile(r"\{[^}]*\}")

SchemaKind = Literal["pain.008", "pain.001", "camt.053", "camt.054"]

SCHEMA_FILES: dict[str, str] = {
    "pain.008": "pain.008.001.08_GBIC_5.xsd",
    "pain.001": "pain.001.001.09_GBIC_5.xsd",
    "camt.053": "camt.053.001.08.xsd",
    "camt.054": "camt.054.001.08.xsd",
}
NAMESPACES: dict[str, str] = {
    "pain.008": "urn:iso:std:iso:20022:tech:xsd:pain.008.001.08",
    "pain.001": "urn:iso:std:iso:20022:tech:xsd:pain.001.001.09",
    "camt.053": "urn:iso:std:iso:20022:tech:xsd:camt.053.001.08",
    "camt.054": "urn:iso:std:iso:20022:tech:xsd:camt.054.001.08",
}

#: Every bank-statement version the camt reader takes, by its full name (``camt.053.001.02``):
#: message type and version pick the schema; ``connectors/sepa/camt.py`` maps them all to the
#: same records. camt.052.001.04 is missing: its schema is not in the project.
CAMT_VERSIONS: tuple[str, ...] = (
    "camt.052.001.02",
    "camt.052.001.08",
    "camt.053.001.02",
    "camt.053.001.04",
    "camt.053.001.08",
    "camt.054.001.02",
    "camt.054.001.04",
    "camt.054.001.08",
)
SCHEMA_FILES.update({name: f"{name}.xsd" for name in CAMT_VERSIONS})
NAMESPACES.update({name: f"urn:iso:std:iso:20022:tech:xsd:{name}" for name in CAMT_VERSIONS})


@cache
def load_schema(kind: str) -> etree.XMLSchema:
    """The compiled schema of ``kind`` (compiled once per process; about 50 ms each).

    Raises:
        KeyError: ``kind`` is not one of ``SCHEMA_FILES``.
    """
    return etree.XMLSchema(etree.parse(str(XSD_DIR / SCHEMA_FILES[kind])))


def detect_kind(path: Path) -> str:
    """Which schema a file claims, from the namespace of its root element (reads only the start).

    Raises:
        SepaValidationError: the root namespace is none of the supported messages.
    """
    for _event, elem in etree.iterparse(str(path), events=("start",)):
        namespace = etree.QName(elem).namespace or ""
        for kind, ns in NAMESPACES.items():
            if ns == namespace:
                return kind
        raise SepaValidationError(
            f"{path.name}: unsupported message namespace {namespace!r}; expected one of "
            f"{', '.join(NAMESPACES.values())}"
        )
    raise SepaValidationError(f"{path.name}: empty file")


def iter_validated(
    path: Path | IO[bytes],
    kind: str,
    tags: tuple[str, ...],
    validate: bool = True,
    locate_errors: bool = True,
) -> Iterator[etree._Element]:
    """Yield the complete elements named ``tags`` (local names) while validating the whole file.

    Each yielded element is cleared and detached from the tree after the consumer has seen it,
    so memory stays bounded by the largest single element.

    Raises:
        SepaValidationError: the file breaks the schema or is not well-formed, with the real line
            (for a schema error in a file, found by ``schema_error_line``; a stream has none to
            re-read, and ``locate_errors=False`` leaves it to the caller). The parser's error is
            the ``__cause__``.
    """
    ns = NAMESPACES[kind]
    qualified = tuple(f"{{{ns}}}{tag}" for tag in tags)
    kwargs: dict[str, Any] = {"events": ("end",), "tag": qualified, "huge_tree": True}
    if validate:
        kwargs["schema"] = load_schema(kind)
    source: str | IO[bytes] = str(path) if isinstance(path, Path) else path
    try:
        for _event, elem in etree.iterparse(source, **kwargs):
            yield elem
            elem.clear(keep_tail=False)
            parent = elem.getparent()
            previous = elem.getprevious()
            while parent is not None and previous is not None and previous.tag == elem.tag:
                parent.remove(previous)
                previous = elem.getprevious()
    except etree.XMLSyntaxError as exc:  # schema errors are raised as syntax errors by the parser
        raise SepaValidationError(_describe(path, kind, exc, locate_errors)) from exc


def _describe(path: Path | IO[bytes], kind: str, exc: etree.XMLSyntaxError, locate: bool) -> str:
    """``<file> line <n>: not valid against <schema>: <message>`` (no ``line 0``, no namespaces)."""
    name = path.name if isinstance(path, Path) else "stream"
    message = readable_error(exc.msg or str(exc))
    if exc.lineno:  # the XML parser knows its line; only schema errors come without one
        return f"{name} line {exc.lineno}: not a well-formed XML file: {message}"
    line = schema_error_line(path, kind) if locate and isinstance(path, Path) else None
    where = f" line {line}" if line else ""
    return f"{name}{where}: not valid against {SCHEMA_FILES[kind]}: {message}"


def readable_error(message: str) -> str:
    """A libxml2 message for people: no namespaces in element names (``{urn:...}Sts`` -> ``Sts``),
    none of lxml's ``line 79: b'...'`` wrapping (the line is reported on its own)."""
    text = _NAMESPACE_IN_MESSAGE.sub("", message).strip()
    text = re.sub(r"^line \d+: ", "", text)
    wrapped = re.fullmatch(r"b(['\"])(.*)\1", text, flags=re.S)
    return (wrapped.group(2) if wrapped else text).rstrip(".")


def schema_error_line(path: Path, name: str) -> int | None:
    """The line of ``path`` at which its first schema error is found.

    Why: a parser that validates while it reads (``iterparse(schema=...)``, lxml's
    ``xmlSchemaSAXPlug``) reports schema errors without a position: libxml2's streaming validator
    gets no parser context from lxml, so every message says ``<string>, line 0``; and lxml raises
    the error only when the whole file has been read, so the position the reader has reached
    says nothing either. Only validating a whole tree (``XMLSchema.validate``) knows the lines,
    and that needs the whole file in memory. So, only when a file is refused, it is validated once
    more, streaming, fed to the parser one line at a time: libxml2 reports the error (to lxml's
    error log, at once) while it parses the line that holds the offending element, or for an
    element's value or missing child, the line of its end tag. Memory stays flat.

    The error log that hears the error as it happens is the thread's global one; it is replaced
    in a short-lived thread of its own, so the caller's error log is never touched.

    Returns:
        The 1-based line, or None when the second pass finds no schema error.
    """
    found: list[int] = []

    class _FirstSchemaError(etree.PyErrorLog):
        def receive(self, log_entry: etree._LogEntry) -> None:
            if log_entry.domain == etree.ErrorDomains.SCHEMASV:
                found.append(0)

    def scan() -> None:
        etree.use_global_python_log(_FirstSchemaError())
        parser = etree.XMLPullParser(events=("end",), schema=load_schema(name), huge_tree=True)
        with open(path, "rb") as fh:
            for number, line in enumerate(fh, start=1):
                try:
                    parser.feed(line)
                except etree.XMLSyntaxError:
                    return
                if found:
                    found[0] = number
                    return
                for _event, elem in parser.read_events():
                    elem.clear(keep_tail=False)
                    parent = elem.getparent()
                    while parent is not None and elem.getprevious() is not None:
                        del parent[0]

    worker = threading.Thread(target=scan, name="camt-schema-error-line", daemon=True)
    worker.start()
    worker.join()
    return found[0] if found and found[0] else None


def validate_file(path: Path, kind: str | None = None) -> str:
    """Validate any supported file streaming; returns the kind it was checked as.

    Raises:
        SepaValidationError: not valid, not well-formed, or of an unsupported message type.
    """
    kind = kind or detect_kind(path)
    for _elem in iter_validated(path, kind, ("Ntry", "DrctDbtTxInf", "CdtTrfTxInf", "GrpHdr"), validate=True):
        pass
    return kind
