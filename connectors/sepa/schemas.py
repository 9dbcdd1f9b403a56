"""XSD validation of SEPA and camt files, streaming so memory stays flat for any file size.

Why streaming: ``XMLSchema.validate(tree)`` needs the whole document as a tree (about 1 GB for a
million transactions). A parser that carries the schema validates while it reads, and ``iterparse``
lets us drop every transaction once it has been seen, so a file of any size is validated (and its
control sums re-counted) with a few megabytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import IO, Any, Literal

from lxml import etree

from connectors.sepa.errors import SepaValidationError

XSD_DIR = Path(__file__).resolve().parent / "xsd"

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
    path: Path | IO[bytes], kind: str, tags: tuple[str, ...], validate: bool = True
) -> Iterator[etree._Element]:
    """Yield the complete elements named ``tags`` (local names) while validating the whole file.

    Each yielded element is cleared and detached from the tree after the consumer has seen it,
    so memory stays bounded by the largest single element.

    Raises:
        SepaValidationError: the file breaks the schema or is not well-formed (with the line).
    """
    ns = NAMESPACES[kind]
    qualified = tuple(f"{{{ns}}}{tag}" for tag in tags)
    kwargs: dict[str, Any] = {"events": ("end",), "tag": qualified, "huge_tree": True}
    if validate:
        kwargs["schema"] = load_schema(kind)
    source: str | IO[bytes] = str(path) if isinstance(path, Path) else path
    name = path.name if isinstance(path, Path) else "stream"
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
        raise SepaValidationError(f"{name}: not valid against {SCHEMA_FILES[kind]}: {exc}") from exc


def validate_file(path: Path, kind: str | None = None) -> str:
    """Validate any supported file streaming; returns the kind it was checked as.

    Raises:
        SepaValidationError: not valid, not well-formed, or of an unsupported message type.
    """
    kind = kind or detect_kind(path)
    for _elem in iter_validated(path, kind, ("Ntry", "DrctDbtTxInf", "CdtTrfTxInf", "GrpHdr"), validate=True):
        pass
    return kind
