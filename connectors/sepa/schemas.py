"""XSD validation of SEPA and camt files, streaming so memory stays flat for any file size.

Why streaming: ``XMLSchema.validate(tree)`` needs the whole document as a tree (about 1 GB for a
million transactions). A parser that carries the schema validates while it reads, and ``iterparse``
lets us drop every transaction once it has been seen, so a file of any size is validated (and its
control sums re-counted) with a few megabytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import IO, Any, Literal

from lxml import etree

from connectors.sepa.errors import SepaValidationError

XSD_DIR = Path(__file__).resolve().parent / "xsd"

SchemaKind = Literal["pain.008", "camt.053", "camt.054"]

SCHEMA_FILES: dict[str, str] = {
    "pain.008": "pain.008.001.08_GBIC_5.xsd",
    "camt.053": "camt.053.001.08.xsd",
    "camt.054": "camt.054.001.08.xsd",
}
NAMESPACES: dict[str, str] = {
    "pain.008": "urn:iso:std:iso:20022:tech:xsd:pain.008.001.08",
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


@dataclass
class Pain008Totals:
    """Control figures of a pain.008 file, as announced in its headers and as re-counted."""

    msg_id: str = ""
    header_nb_of_txs: int = 0
    header_ctrl_sum: Decimal = Decimal("0")
    counted_nb_of_txs: int = 0
    counted_ctrl_sum: Decimal = Decimal("0")
    blocks: dict[str, tuple[int, Decimal, int, Decimal]] = field(default_factory=dict)
    end_to_end_ids: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """Every disagreement between announced and counted figures (empty when the file adds up)."""
        out = []
        if self.header_nb_of_txs != self.counted_nb_of_txs:
            out.append(f"group NbOfTxs {self.header_nb_of_txs} but {self.counted_nb_of_txs} transactions")
        if self.header_ctrl_sum != self.counted_ctrl_sum:
            out.append(f"group CtrlSum {self.header_ctrl_sum} but transactions sum {self.counted_ctrl_sum}")
        for pmt_inf_id, (n_hdr, sum_hdr, n_cnt, sum_cnt) in self.blocks.items():
            if n_hdr != n_cnt or sum_hdr != sum_cnt:
                out.append(
                    f"block {pmt_inf_id}: NbOfTxs/CtrlSum {n_hdr}/{sum_hdr} but counted {n_cnt}/{sum_cnt}"
                )
        return out


def scan_pain008(
    path: Path | IO[bytes],
    validate: bool = True,
    collect_ids: bool = False,
    on_transaction: Callable[[etree._Element], None] | None = None,
) -> Pain008Totals:
    """Validate a pain.008 file against the DK schema and re-count its control sums in one pass.

    Args:
        path: the file.
        validate: check against ``pain.008.001.08_GBIC_5.xsd`` while reading.
        collect_ids: also return every EndToEndId (tests; a million ids cost about 80 MB).
        on_transaction: called with each ``DrctDbtTxInf`` element before it is dropped.

    Raises:
        SepaValidationError: schema violation; sums are reported by ``Pain008Totals.problems``.
    """
    ns = NAMESPACES["pain.008"]
    q = f"{{{ns}}}"
    tx_tag, hdr_tag, amt_tag = q + "DrctDbtTxInf", q + "GrpHdr", q + "InstdAmt"
    totals = Pain008Totals()
    block_n = 0
    block_cents = 0
    all_cents = 0
    pmt_inf_id = ""
    block_hdr: tuple[int, Decimal] = (0, Decimal("0"))
    for elem in iter_validated(path, "pain.008", ("GrpHdr", "DrctDbtTxInf", "PmtInf"), validate):
        tag = elem.tag
        if tag == tx_tag:
            if block_n == 0:  # first transaction of a block: its header children are still there
                block = elem.getparent()
                pmt_inf_id = block.findtext(q + "PmtInfId") or ""
                block_hdr = (
                    int(block.findtext(q + "NbOfTxs") or "0"),
                    Decimal(block.findtext(q + "CtrlSum") or "0"),
                )
            block_n += 1
            block_cents += _to_cents(elem.findtext(amt_tag) or "0")
            if collect_ids:
                totals.end_to_end_ids.append(elem.findtext(f"{q}PmtId/{q}EndToEndId") or "")
            if on_transaction is not None:
                on_transaction(elem)
        elif tag == hdr_tag:
            totals.msg_id = elem.findtext(q + "MsgId") or ""
            totals.header_nb_of_txs = int(elem.findtext(q + "NbOfTxs") or "0")
            totals.header_ctrl_sum = Decimal(elem.findtext(q + "CtrlSum") or "0")
        else:  # PmtInf end: its transactions have been counted
            totals.blocks[pmt_inf_id] = (block_hdr[0], block_hdr[1], block_n, Decimal(block_cents).scaleb(-2))
            totals.counted_nb_of_txs += block_n
            all_cents += block_cents
            block_n = 0
            block_cents = 0
    totals.counted_ctrl_sum = Decimal(all_cents).scaleb(-2)
    return totals


def _to_cents(text: str) -> int:
    """Exact cents of an amount text (the schema allows at most two decimals; more raise)."""
    whole, _, fraction = text.partition(".")
    if len(fraction) <= 2 and whole.isdigit() and (not fraction or fraction.isdigit()):
        return int(whole) * 100 + int(fraction.ljust(2, "0"))
    value = Decimal(text) * 100
    if value != value.to_integral_value():
        raise SepaValidationError(f"amount {text} has more than two decimals")
    return int(value)


def validate_file(path: Path, kind: str | None = None) -> str:
    """Validate any supported file streaming; returns the kind it was checked as.

    Raises:
        SepaValidationError: not valid, not well-formed, or of an unsupported message type.
    """
    kind = kind or detect_kind(path)
    for _elem in iter_validated(path, kind, ("Ntry", "DrctDbtTxInf", "GrpHdr"), validate=True):
        pass
    return kind


class ParallelScan:
    """Validate and re-count a pain.008 stream in a child process while it is being written.

    Why: writing and validating each cost about a second per 100,000 transactions and both hold
    the GIL; a child process that parses the bytes as they are written uses the second core, so
    the file is checked by the time it is closed. ``write`` takes the same bytes as the file;
    ``finish`` returns the child's ``Pain008Totals``. If the child cannot start, callers fall back
    to ``scan_pain008`` on the finished file.
    """

    def __init__(self) -> None:
        root = Path(__file__).resolve().parents[2]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p),
        }
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "connectors.sepa.schemas", "--scan-stdin"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=root,
            env=env,
        )

    def write(self, data: bytes) -> int:
        """Pass written bytes on to the validating child."""
        assert self._proc.stdin is not None
        self._proc.stdin.write(data)
        return len(data)

    def finish(self) -> Pain008Totals:
        """Close the stream and collect the child's result.

        Raises:
            SepaValidationError: the stream broke the schema, or the child failed.
        """
        out, err = self._proc.communicate()
        if self._proc.returncode != 0 or not out:
            raise SepaValidationError(f"validating child failed: {err.decode(errors='replace')[-500:]}")
        result = json.loads(out.decode().strip().splitlines()[-1])
        if result.get("error"):
            raise SepaValidationError(result["error"])
        totals = Pain008Totals(
            msg_id=result["msg_id"],
            header_nb_of_txs=result["header_nb_of_txs"],
            header_ctrl_sum=Decimal(result["header_ctrl_sum"]),
            counted_nb_of_txs=result["counted_nb_of_txs"],
            counted_ctrl_sum=Decimal(result["counted_ctrl_sum"]),
        )
        totals.blocks = {k: (v[0], Decimal(v[1]), v[2], Decimal(v[3])) for k, v in result["blocks"].items()}
        return totals

    def abort(self) -> None:
        """Stop the child (the file is being discarded)."""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()


def _scan_stdin() -> int:
    """Child side of ``ParallelScan``: scan stdin, always drain it, print one JSON line."""
    stream = sys.stdin.buffer
    try:
        totals = scan_pain008(stream)
        result: dict[str, Any] = {
            "msg_id": totals.msg_id,
            "header_nb_of_txs": totals.header_nb_of_txs,
            "header_ctrl_sum": str(totals.header_ctrl_sum),
            "counted_nb_of_txs": totals.counted_nb_of_txs,
            "counted_ctrl_sum": str(totals.counted_ctrl_sum),
            "blocks": {k: [v[0], str(v[1]), v[2], str(v[3])] for k, v in totals.blocks.items()},
        }
    except SepaValidationError as exc:
        result = {"error": str(exc)}
    while stream.read(1 << 20):  # the writer must never block on a full pipe
        pass
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--scan-stdin"]:
        raise SystemExit(_scan_stdin())
