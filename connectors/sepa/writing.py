"""What every SEPA file writer shares: SEPA text and account checks, streaming, validation, publishing.

The pain.008 (direct debit) and pain.001 (credit transfer) writers differ only in their payment
blocks and transactions; everything else is here, once:

- **Text and accounts** (pure): transliteration to the SEPA basic Latin set, the id character set,
  length fitting that says what it dropped, amounts in cents, IBAN and BIC checks (schwifty).
  They live with the writers (not in ``tasks/``) because both writers and the rules of both runs
  use them and a connector may not import ``tasks/``.
- **Owner-only files**: control listings, SEPA files and spools hold names and full IBANs, so every
  file this package writes is created ``0600`` and every folder it creates ``0700``.
- **Streaming**: ``stream_document`` writes the declaration, the group header (whose counts and sum
  the caller announces) and the blocks with lxml's incremental writer, and refuses a block whose
  transactions do not add up to its announcement.
- **Validation while writing**: ``write_validated_part`` tees the bytes into a child process that
  validates them against the bank schema and re-counts every control sum (``scan_payment_file``).
- **Atomic publishing**: a file is written as ``<name>.part``, fsynced, checked, and only then
  renamed (``os.replace``), so a crash never leaves a half-written SEPA file under its real name.
- **Fault points** for the crash tests (``HAUSFLOW_SEPA_FAULT``), inert in normal operation.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

from lxml import etree
from schwifty import BIC, IBAN

from connectors.sepa.errors import SepaValidationError
from connectors.sepa.schemas import NAMESPACES, SCHEMA_FILES, iter_validated, schema_error_line

# ---------------------------------------------------------------------------------------------
# Character sets, text and amounts
# ---------------------------------------------------------------------------------------------

#: Characters the DK schema allows in ids (MsgId, PmtInfId, EndToEndId, MndtId).
ID_ALLOWED = re.compile(r"^[A-Za-z0-9+?/\-:().,' ]{1,35}$")
_ID_FORBIDDEN = re.compile(r"[^A-Za-z0-9+?/\-:().,' ]")
#: The SEPA basic Latin character set for free text (names, remittance).
_TEXT_FORBIDDEN = re.compile(r"[^A-Za-z0-9+?/\-:().,' ]")
#: Characters spelt out rather than blanked: German letters (ä -> ae), letters without a separable
#: mark (ø -> o, æ -> ae, ł -> l), and signs with a SEPA equivalent (& -> +, _ -> -, ; -> ,).
_SPELLED: dict[str, str] = {
    **{"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue"},
    **{"Ø": "O", "ø": "o", "Æ": "Ae", "æ": "ae", "Œ": "Oe", "œ": "oe", "Ł": "L", "ł": "l"},
    **{"Đ": "D", "đ": "d", "Ð": "D", "ð": "d", "Þ": "Th", "þ": "th", "ı": "i"},
    **{"&": "+", "_": "-", "\t": " ", "\n": " ", "\r": " ", ";": ",", "!": "."},
    # signs the set lacks, spelt out (runs of spaces collapse afterwards): 5% -> 5 Prozent
    **{"ẞ": "SS", "€": " EUR ", "%": " Prozent ", "=": " gleich ", "@": "(at)", "#": " Nr. "},
    **{"\u201c": "'", "\u201d": "'", "\u201e": "'", "\u00ab": "'", "\u00bb": "'", '"': "'"},
    **{"\u2018": "'", "\u2019": "'", "\u201a": "'", "`": "'", "\u2013": "-", "\u2014": "-", "\u00d7": "x"},
}
_SPACES = re.compile(r" {2,}")
#: The characters German texts carry most, replaced by ``str.replace`` (fast, in C) before the
#: regular expression looks for anything else outside the set.
_COMMON = tuple((char, _SPELLED[char]) for char in "äöüßÄÖÜ&_;!\t\n\r")


@lru_cache(maxsize=1024)
def _spell(char: str) -> str:
    """The SEPA spelling of one character outside the set: spelt out, stripped of its accent, or a space."""
    spelled = _SPELLED.get(char)
    if spelled is None:
        decomposed = unicodedata.normalize("NFKD", char)
        spelled = _TEXT_FORBIDDEN.sub(" ", "".join(c for c in decomposed if not unicodedata.combining(c)))
    return spelled


def _spell_match(match: re.Match[str]) -> str:
    return _spell(match.group())


MAX_ID = 35
MAX_NAME = 70
MAX_REMITTANCE = 140
MIN_CENTS = 1
MAX_CENTS = 99_999_999_999  # 999,999,999.99 EUR
NOTPROVIDED = "NOTPROVIDED"


@lru_cache(maxsize=4096)
def transliterate(text: str) -> str:
    """Turn any text into the SEPA basic Latin set without losing meaning.

    The text is first composed (NFC: ``u`` + combining diaeresis is ``ü``). German umlauts become
    two letters (ä -> ae, ß -> ss, ẞ -> SS), other accents lose their mark (é -> e), letters
    without a separable mark are spelt out (ø -> o, æ -> ae, ł -> l), signs the set lacks are
    spelt out (``&`` -> ``+``, ``_`` -> ``-``, € -> EUR, % -> Prozent, = -> gleich, @ -> (at),
    # -> Nr., typographic quotes -> ', dashes -> -); anything else outside the set becomes a space
    (``blanked_characters`` says which, for a warning), and runs of spaces collapse. Nothing is cut here; length is the caller's business. One regular
    expression pass that touches only the characters outside the set (a few microseconds);
    recent texts are remembered (a trust account's or an owner's name recurs).
    """
    if not text.isascii():  # "Mu" + combining diaeresis is "Mü" (NFC), so it becomes "Mue"
        text = unicodedata.normalize("NFC", text)
    for char, spelled in _COMMON:
        if char in text:
            text = text.replace(char, spelled)
    if _TEXT_FORBIDDEN.search(text) is not None:
        text = _TEXT_FORBIDDEN.sub(_spell_match, text)
    if "  " in text:
        text = _SPACES.sub(" ", text)
    return text.strip()


#: ``_TEXT_FORBIDDEN`` but for NUL, which separates the texts ``transliterate_many`` joins.
_TEXT_FORBIDDEN_BUT_NUL = re.compile(r"[^A-Za-z0-9+?/\-:().,' \x00]")


def transliterate_many(texts: Sequence[str]) -> list[str]:
    """``transliterate`` of many texts at once: the same result for each, computed together.

    Why: a payout file transliterates two texts per payout; a hundred thousand calls of a
    function of a few steps cost more than the steps. Joined with NUL (outside the SEPA set,
    never produced by a spelling), each step runs once over all texts in C, and no step crosses a
    NUL: the spellings replace single characters, the spaces collapse only within a run of
    spaces, and each text is stripped after the split. A text holding a NUL itself is done one
    by one.
    """
    joined = "\x00".join(texts)
    if not joined.isascii():
        joined = unicodedata.normalize("NFC", joined)
    for char, spelled in _COMMON:
        if char in joined:
            joined = joined.replace(char, spelled)
    if _TEXT_FORBIDDEN_BUT_NUL.search(joined) is not None:
        joined = _TEXT_FORBIDDEN_BUT_NUL.sub(_spell_match, joined)
    if "  " in joined:
        joined = _SPACES.sub(" ", joined)
    parts = joined.split("\x00")
    if len(parts) != len(texts):  # a text held a NUL
        return [transliterate(text) for text in texts]
    return [part.strip() for part in parts]


def _is_blanked(char: str) -> bool:
    """True when ``transliterate`` has no spelling for ``char`` and leaves a space (or nothing)."""
    return not char.isspace() and char != "\x00" and not _spell(char).strip()


def blanked_characters(text: str) -> str:
    """The characters of ``text`` that ``transliterate`` cannot spell and blanks ('' for none).

    Why: a symbol or a letter of another script turned into a space changes the text without a
    trace; callers warn with the record's name when this is not empty, so the control listing
    and the log show it. Whitespace is not reported (it stays a space). A pass in C over the
    characters outside the SEPA set; only those are looked at.
    """
    if text.isascii() and _TEXT_FORBIDDEN_BUT_NUL.search(text) is None:
        return ""
    text = unicodedata.normalize("NFC", text)
    found = {char for char in set(_TEXT_FORBIDDEN_BUT_NUL.findall(text)) if _is_blanked(char)}
    return "".join(sorted(found))


def blanked_warning(what: str, text: str) -> str | None:
    """A warning that ``what`` (e.g. ``creditor name``) lost characters, or None when none was blanked."""
    blanked = blanked_characters(text)
    if not blanked:
        return None
    shown = " ".join(f"'{c}' (U+{ord(c):04X})" for c in blanked)
    return f"{what}: {shown} has no SEPA spelling and was left out; check the text ({text!r})"


def sanitize_id(text: str) -> str:
    """Transliterate an id part and drop characters the id charset forbids (spaces kept)."""
    return _ID_FORBIDDEN.sub("", transliterate(text))


def sepa_id_problem(value: str) -> str | None:
    """None when ``value`` may be a SEPA id (MsgId, PmtInfId, EndToEndId, MndtId); else what is wrong.

    The DK schema asks for 1-35 characters of ``A-Z a-z 0-9 space + ? / - : ( ) . , '``; the EPC
    rules add what the schema does not check and banks refuse: no space at the start or end (nor
    spaces only), no ``/`` at the start or end, and no ``//`` inside.
    """
    if not ID_ALLOWED.match(value):
        return "must be 1-35 characters of A-Z a-z 0-9 space + ? / - : ( ) . , '"
    if value != value.strip(" "):
        return "must not start or end with a space" if value.strip(" ") else "must not be spaces only"
    if value.startswith("/") or value.endswith("/"):
        return "must not start or end with '/'"
    if "//" in value:
        return "must not contain '//'"
    return None


def is_valid_sepa_id(value: str) -> bool:
    """True when ``value`` is a SEPA id the bank takes (see ``sepa_id_problem``)."""
    return sepa_id_problem(value) is None


def fit_text(text: str, limit: int) -> tuple[str, str | None]:
    """Shorten ``text`` to ``limit`` at a word boundary when possible; say what was dropped.

    Returns:
        (text that fits, None) or (shortened text, warning naming the dropped part).
    """
    if len(text) <= limit:
        return text, None
    cut = text.rfind(" ", 0, limit + 1)
    if cut < limit * 2 // 3:  # no sensible word boundary: cut hard
        cut = limit
    kept = text[:cut].rstrip()
    dropped = text[len(kept) :].strip()
    return kept, f"shortened to {limit} characters, dropped: '{dropped}'"


def to_cents(amount: Decimal | float | str) -> int:
    """Exact amount in cents.

    Raises:
        ValueError: more than two decimals (a SEPA amount has at most two).
    """
    value = amount if isinstance(amount, Decimal) else Decimal(str(amount))
    cents = value * 100
    if cents != cents.to_integral_value():
        raise ValueError(f"amount {amount} has more than two decimals")
    return int(cents)


def amount_cents(amount: Decimal | float | str | None) -> tuple[int | None, str | None]:
    """(cents, None) for a SEPA amount: 0.01 to 999,999,999.99 EUR with at most two decimals;
    (None, reason) otherwise."""
    if amount is None:
        return None, "amount is missing"
    try:
        cents = to_cents(amount)
    except (ValueError, ArithmeticError) as exc:
        return None, f"amount {amount} is not valid: {exc}"
    if not MIN_CENTS <= cents <= MAX_CENTS:
        return None, f"amount {amount} is outside 0.01 to 999,999,999.99 EUR"
    return cents, None


def check_amount(amount: Decimal | float | str | None) -> str | None:
    """None when the amount is a SEPA amount: 0.01 to 999,999,999.99 EUR with at most two decimals."""
    return amount_cents(amount)[1]


def format_cents(cents: int) -> str:
    """Amount in cents as the decimal text SEPA wants (two decimals, dot, no grouping)."""
    return f"{cents // 100}.{cents % 100:02d}"


#: Countries of the European Economic Area (EU, Iceland, Liechtenstein, Norway). A payment to or
#: from an account in another SEPA country (Switzerland, the United Kingdom, Monaco, ...) needs
#: the BIC of its bank (EPC rulebooks); inside the EEA the IBAN alone is enough.
EEA_COUNTRIES = frozenset(
    [
        "AT",
        "BE",
        "BG",
        "CY",
        "CZ",
        "DE",
        "DK",
        "EE",
        "ES",
        "FI",
        "FR",
        "GR",
        "HR",
        "HU",
        "IE",
        "IT",
        "LT",
        "LU",
        "LV",
        "MT",
        "NL",
        "PL",
        "PT",
        "RO",
        "SE",
        "SI",
        "SK",
        "IS",
        "LI",
        "NO",
    ]
)


@lru_cache(maxsize=8192)
def check_iban(iban: str) -> str | None:
    """None when the IBAN can go into a SEPA file; else the reason, naming the rule.

    Checked (schwifty): length, format, check digits, the bank's own account check digit
    (``validate_bban``, the German "Pruefziffer" included), and membership of the SEPA zone: an
    account in Brazil or Saudi Arabia has a valid IBAN but cannot be paid or debited by SEPA.
    ``iban`` is the compact form (``compact_account``).
    """
    try:
        account = IBAN(iban, validate_bban=True)
    except ValueError as exc:
        return f"IBAN {iban!r} is not valid: {exc}"
    if not account.in_sepa_zone:
        return (
            f"IBAN {iban} is from {account.country_code}, which is outside the SEPA zone: pay it another way"
        )
    return None


@lru_cache(maxsize=8192)
def check_bic(bic: str | None, iban: str) -> str | None:
    """None when the BIC may go with the IBAN; else the reason.

    Empty is fine for an IBAN of the EEA (IBAN-only); an IBAN of a SEPA country outside the EEA
    (CH, GB, MC, SM, ...) needs the BIC. A BIC given must be valid and belong to the IBAN's bank:
    same country; and where the bank registry knows the IBAN's bank, the same institution code
    (first four letters) as one of that bank's BICs.
    """
    if not bic:
        try:
            country = IBAN(iban).country_code
        except ValueError:
            return None  # the IBAN check reports it
        if country not in EEA_COUNTRIES:
            return f"IBAN {iban} is from {country}, outside the EEA: SEPA needs the bank's BIC there; add it"
        return None
    try:
        parsed = BIC(bic)
    except ValueError as exc:
        return f"BIC {bic!r} is not valid: {exc}"
    try:
        account = IBAN(iban)
    except ValueError:
        return None  # the IBAN check reports it
    if parsed.country_code != account.country_code:
        return f"BIC {bic} is from {parsed.country_code} but the IBAN from {account.country_code}"
    known = account.bic
    if known is not None and str(known)[:4] != str(parsed)[:4]:
        return f"BIC {bic} does not belong to the IBAN's bank (registry: {known})"
    return None


#: Whitespace of any kind (tab, no-break space U+00A0, narrow no-break space, ...) and the
#: invisible format characters copy and paste brings along (zero-width space, word joiner, BOM).
_ACCOUNT_NOISE = re.compile(r"[\s\u200b-\u200d\u2060\ufeff]+")


def compact_account(value: str | None) -> str:
    """IBAN or BIC as the file wants it: no whitespace of any kind, upper case ('' for None).

    Why every kind: schwifty accepts an IBAN with a no-break space or a tab in it, but the bank's
    schema does not; a value compacted only of plain spaces passed the checks and then failed the
    whole file.
    """
    if not value:
        return ""
    return _ACCOUNT_NOISE.sub("", value).upper()


# ---------------------------------------------------------------------------------------------
# Owner-only files and folders (names and full IBANs)
# ---------------------------------------------------------------------------------------------

FILE_MODE = 0o600
DIR_MODE = 0o700


def make_private_dir(folder: Path) -> Path:
    """Create ``folder`` (and missing parents) readable by the owner only (0700); returns it.

    ``folder`` itself, when it exists already and is ours, is tightened to 0700 too: files written
    there before the owner-only change may still be world-readable, and a closed folder keeps
    them from others. Its existing parents keep their permissions (an operator chose them).
    """
    missing = []
    current = folder
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(path, DIR_MODE)  # mkdir's mode is reduced by the umask, never widened: set it
    if not missing:
        info = folder.stat()
        if info.st_mode & 0o077 and info.st_uid == os.getuid():
            os.chmod(folder, DIR_MODE)
    return folder


SYSTEM_MARKER = ".hausflow-system"


def claim_output_dir(folder: Path, system: str) -> Path:
    """Create ``folder`` owner-only as :func:`make_private_dir` does and mark it as ``system``'s.

    Why: bank files of the test system in the production system's folder would reach the bank.
    The first run that writes there leaves ``.hausflow-system`` with its system's name; a run of
    another system is refused before it writes anything. Returns ``folder``.

    Raises:
        SystemMixError: the folder belongs to another system.
    """
    from config.settings import SystemMixError  # here: the validating child needs no settings

    make_private_dir(folder)
    marker = folder / SYSTEM_MARKER
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        owner = marker.read_text(encoding="utf-8").strip()
    else:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(f"{system}\n")
        return folder
    if owner and owner != system:
        raise SystemMixError(
            f"The folder {folder} belongs to the {owner} system ({marker}); this run is the {system} "
            f"system's and writes nothing there. Give the {system} system its own folder; if the folder "
            f"is meant to be the {system} system's now, delete {marker.name} in it."
        )
    return folder


def open_private(path: Path, mode: str = "wb", **kwargs: Any) -> IO[Any]:
    """Open ``path`` for writing (truncating), readable and writable by the owner only (0600).

    An existing file is set to 0600 as well: a listing written again must not stay world-readable.
    ``mode`` is ``"wb"`` or ``"w"`` (text; ``kwargs`` go to ``open``, e.g. ``newline``, ``encoding``).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"open_private writes only ('wb' or 'w'), not {mode!r}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        return os.fdopen(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise


# ---------------------------------------------------------------------------------------------
# Fault points (crash tests)
# ---------------------------------------------------------------------------------------------

FAULT_ENV = "HAUSFLOW_SEPA_FAULT"
_FAULT_COUNTS: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Fault injection for the crash tests: SIGKILL this process at a named point.

    ``HAUSFLOW_SEPA_FAULT=before_publish`` kills at the first rename; ``after_tx:3`` when the third
    transaction (counted over all files of the process) has been written; ``after_publish:2`` at
    the second file's rename. Unset in normal operation (one dictionary lookup).
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    point, _, number = spec.partition(":")
    if point != name:
        return
    _FAULT_COUNTS[name] = _FAULT_COUNTS.get(name, 0) + 1
    if number and _FAULT_COUNTS[name] != int(number):
        return
    os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# Streaming a document
# ---------------------------------------------------------------------------------------------


class AnnouncedBlock(Protocol):
    """A payment block as the writer sees it: its id and the count and sum it announces."""

    @property
    def pmt_inf_id(self) -> str: ...

    @property
    def nb_of_txs(self) -> int: ...

    @property
    def ctrl_sum_cents(self) -> int: ...


B = TypeVar("B", bound=AnnouncedBlock)
T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)


class TransactionTemplate(Protocol[T_contra]):
    """A prepared transaction element of one shape whose leaf texts are refilled per transaction.

    Why: building ~20 elements per transaction costs 4-6 times more than setting a few texts on a
    prepared element and letting lxml serialise it in C. The elements carry no namespace; written
    inside the ``Document`` element (default namespace of the message) they belong to it, which
    the XSD check of every file confirms.
    """

    def fill(self, tx: T_contra) -> etree._Element:
        """Set the texts of ``tx`` and return the element to write (valid until the next fill)."""
        ...


class TransactionLeaves:
    """The leaves every transaction template has, and how they are filled: EndToEndId, amount,
    the other party's BIC (optional), name, IBAN, and the remittance line (optional).

    Subclasses build ``root`` and set these attributes to its elements; ``fill_leaves`` sets
    their texts for one transaction.
    """

    root: etree._Element
    e2e: etree._Element
    amount: etree._Element
    bic: etree._Element | None
    name: etree._Element
    iban: etree._Element
    remittance: etree._Element | None

    def fill_leaves(
        self, e2e: str, cents: int, bic: str | None, name: str, iban: str, remittance: str | None
    ) -> etree._Element:
        """Set the shared texts; returns the element to write (valid until the next fill)."""
        self.e2e.text = e2e
        self.amount.text = format_cents(cents)
        if self.bic is not None:
            self.bic.text = bic
        self.name.text = name
        self.iban.text = iban
        if self.remittance is not None:
            self.remittance.text = remittance
        return self.root


def write_block_header(
    xf: etree.xmlfile, pmt_inf_id: str, method: str, batch_booking: bool | None, nb_of_txs: int, cents: int
) -> None:
    """The first children of a ``PmtInf``: id, method (DD/TRF), batch booking (left out: None), sums."""
    el = xf.element
    w = xf.write
    with el("PmtInfId"):
        w(pmt_inf_id)
    with el("PmtMtd"):
        w(method)
    if batch_booking is not None:
        with el("BtchBookg"):
            w("true" if batch_booking else "false")
    with el("NbOfTxs"):
        w(str(nb_of_txs))
    with el("CtrlSum"):
        w(format_cents(cents))


def write_transactions(
    xf: etree.xmlfile,
    transactions: Iterable[T],
    shape_of: Callable[[T], tuple[bool, ...]],
    make_template: Callable[[tuple[bool, ...]], TransactionTemplate[T]],
    cents_of: Callable[[T], int],
) -> tuple[int, int]:
    """Write the transactions of one block through one reusable template per shape.

    Returns:
        (number written, sum in cents), for the caller to compare with the block's announcement.
    """
    templates: dict[tuple[bool, ...], TransactionTemplate[T]] = {}
    write = xf.write
    n = 0
    cents = 0
    for tx in transactions:
        n += 1
        cents += cents_of(tx)
        shape = shape_of(tx)
        tmpl = templates.get(shape)
        if tmpl is None:
            tmpl = templates[shape] = make_template(shape)
        write(tmpl.fill(tx))
    return n, cents


def write_agent(xf: etree.xmlfile, bic: str | None) -> None:
    """``FinInstnId`` of an agent: the BIC, or ``Othr/Id NOTPROVIDED`` (IBAN-only)."""
    el = xf.element
    with el("FinInstnId"):
        if bic:
            with el("BICFI"):
                xf.write(bic)
        else:
            with el("Othr"), el("Id"):
                xf.write(NOTPROVIDED)


def stream_document(
    out: IO[bytes],
    kind: str,
    root_tag: str,
    msg_id: str,
    created_at: datetime,
    initiating_party: str,
    blocks: Sequence[B],
    write_block: Callable[[etree.xmlfile, B], tuple[int, int]],
) -> tuple[int, int]:
    """Stream one pain document to ``out``: declaration, group header, then block after block.

    Args:
        out: binary file object (a ``.part`` file).
        kind: ``pain.008`` or ``pain.001`` (the default namespace of the document).
        root_tag: ``CstmrDrctDbtInitn`` or ``CstmrCdtTrfInitn``.
        msg_id: unique message id (1-35 characters of the SEPA id charset).
        created_at: timezone-aware creation time (ISO 8601 with offset, 24-hour clock).
        initiating_party: name in ``InitgPty`` (already transliterated, at most 70 characters).
        blocks: payment blocks in file order with their announced counts and sums.
        write_block: writes one ``PmtInf`` and returns (transactions, cents) as counted.

    Returns:
        (number of transactions, sum in cents) as counted while writing.

    Raises:
        SepaValidationError: a block's transactions do not match its announced NbOfTxs/CtrlSum;
            the output is then incomplete and must be discarded.
        ValueError: ``created_at`` is naive or no block was given.
    """
    if created_at.tzinfo is None:
        raise ValueError("created_at must be timezone-aware")
    if not blocks:
        raise ValueError(f"a {kind} file needs at least one payment block")
    counted_n = 0
    counted_cents = 0
    with etree.xmlfile(out, encoding="UTF-8", buffered=True) as xf:
        xf.write_declaration()
        el = xf.element
        w = xf.write
        with el("Document", nsmap={None: NAMESPACES[kind]}), el(root_tag):
            with el("GrpHdr"):
                with el("MsgId"):
                    w(msg_id)
                with el("CreDtTm"):
                    w(created_at.isoformat(timespec="seconds"))
                with el("NbOfTxs"):
                    w(str(sum(b.nb_of_txs for b in blocks)))
                with el("CtrlSum"):
                    w(format_cents(sum(b.ctrl_sum_cents for b in blocks)))
                with el("InitgPty"), el("Nm"):
                    w(initiating_party)
            for block in blocks:
                n, cents = write_block(xf, block)
                if n != block.nb_of_txs or cents != block.ctrl_sum_cents:
                    raise SepaValidationError(
                        f"{msg_id} block {block.pmt_inf_id}: announced {block.nb_of_txs} transactions / "
                        f"{format_cents(block.ctrl_sum_cents)} EUR, wrote {n} / {format_cents(cents)} EUR"
                    )
                counted_n += n
                counted_cents += cents
    return counted_n, counted_cents


# ---------------------------------------------------------------------------------------------
# Re-reading a file: schema and control sums in one streaming pass
# ---------------------------------------------------------------------------------------------

#: Per kind: the transaction element and the elements leading to its amount below it.
TRANSACTION_TAGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "pain.008": ("DrctDbtTxInf", ("InstdAmt",)),
    "pain.001": ("CdtTrfTxInf", ("Amt", "InstdAmt")),
}


@dataclass
class PaymentFileTotals:
    """Control figures of a pain file, as announced in its headers and as re-counted."""

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

    def to_json(self) -> dict[str, Any]:
        """The figures as JSON-able values (the validating child sends them this way)."""
        return {
            "msg_id": self.msg_id,
            "header_nb_of_txs": self.header_nb_of_txs,
            "header_ctrl_sum": str(self.header_ctrl_sum),
            "counted_nb_of_txs": self.counted_nb_of_txs,
            "counted_ctrl_sum": str(self.counted_ctrl_sum),
            "blocks": {k: [v[0], str(v[1]), v[2], str(v[3])] for k, v in self.blocks.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PaymentFileTotals:
        """Inverse of ``to_json``."""
        return cls(
            msg_id=data["msg_id"],
            header_nb_of_txs=data["header_nb_of_txs"],
            header_ctrl_sum=Decimal(data["header_ctrl_sum"]),
            counted_nb_of_txs=data["counted_nb_of_txs"],
            counted_ctrl_sum=Decimal(data["counted_ctrl_sum"]),
            blocks={k: (v[0], Decimal(v[1]), v[2], Decimal(v[3])) for k, v in data["blocks"].items()},
        )


def scan_payment_file(
    path: Path | IO[bytes],
    kind: str,
    validate: bool = True,
    collect_ids: bool = False,
    on_transaction: Callable[[etree._Element], None] | None = None,
) -> PaymentFileTotals:
    """Validate a pain file against its DK schema and re-count its control sums in one pass.

    Args:
        path: the file (or a binary stream).
        kind: ``pain.008`` or ``pain.001``.
        validate: check against the kind's GBIC_5 schema while reading.
        collect_ids: also return every EndToEndId (tests; a million ids cost about 80 MB).
        on_transaction: called with each transaction element before it is dropped.

    Raises:
        SepaValidationError: schema violation; sums are reported by ``PaymentFileTotals.problems``.
    """
    q = f"{{{NAMESPACES[kind]}}}"
    tx_local, amount_path = TRANSACTION_TAGS[kind]
    tx_tag, hdr_tag = q + tx_local, q + "GrpHdr"
    *amt_parents, amt_leaf = (q + part for part in amount_path)
    e2e_path = f"{q}PmtId/{q}EndToEndId"
    totals = PaymentFileTotals()
    block_n = 0
    block_cents = 0
    all_cents = 0
    pmt_inf_id = ""
    block_hdr: tuple[int, Decimal] = (0, Decimal("0"))
    for elem in iter_validated(path, kind, ("GrpHdr", tx_local, "PmtInf"), validate):
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
            holder: etree._Element | None = elem
            for parent_tag in amt_parents:  # direct child lookups: ElementPath paths are slower
                holder = holder.find(parent_tag) if holder is not None else None
            block_cents += _to_cents((holder.findtext(amt_leaf) if holder is not None else None) or "0")
            if collect_ids:
                totals.end_to_end_ids.append(elem.findtext(e2e_path) or "")
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


def file_matches_ledger(path: Path, kind: str, msg_id: str, ledger_totals: tuple[int, Decimal]) -> bool:
    """True when a published file is valid, adds up, is ``msg_id`` and agrees with the ledger's figures.

    Recovery uses it to decide whether a file renamed just before a crash may stand.
    """
    try:
        totals = scan_payment_file(path, kind)
    except SepaValidationError:
        return False
    return (
        not totals.problems()
        and totals.msg_id == msg_id
        and ledger_totals == (totals.counted_nb_of_txs, totals.counted_ctrl_sum)
    )


# ---------------------------------------------------------------------------------------------
# Atomic output and validation while writing
# ---------------------------------------------------------------------------------------------


def part_path(final_path: Path) -> Path:
    """Name of the temporary file for ``final_path`` (same folder, so the rename stays atomic)."""
    return final_path.with_name(final_path.name + ".part")


def write_part(final_path: Path, writer: Callable[[IO[bytes]], object]) -> Path:
    """Write the ``.part`` file of ``final_path`` (0600) with ``writer`` and fsync it; returns its path.

    The part is removed again if ``writer`` fails, so only complete parts survive a normal error.
    """
    part = part_path(final_path)
    make_private_dir(final_path.parent)
    try:
        with open_private(part) as fh:
            writer(fh)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return part


def publish(part: Path, final_path: Path) -> None:
    """Atomically rename a complete ``.part`` file to its final name and persist the rename."""
    os.replace(part, final_path)
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(final_path.parent, os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def atomic_output(final_path: Path) -> Iterator[IO[bytes]]:
    """Write to ``<final>.part``; on success flush, fsync and atomically rename to ``final_path``.

    On any exception the ``.part`` file is removed and the final name never appears. A process
    killed inside the block leaves only a ``.part`` file, which the next run's recovery removes.
    Use ``write_validated_part`` + ``publish`` when the rename must wait for a check.
    """
    part = part_path(final_path)
    make_private_dir(final_path.parent)
    try:
        with open_private(part) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        publish(part, final_path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


class ParallelScan:
    """Validate and re-count a pain stream in a child process while it is being written.

    Why: writing and validating each cost about a second per 100,000 transactions and both hold
    the GIL; a child process that parses the bytes as they are written uses the second core, so
    the file is checked by the time it is closed. ``write`` takes the same bytes as the file;
    ``finish`` returns the child's ``PaymentFileTotals``. If the child cannot start, callers fall
    back to ``scan_payment_file`` on the finished file.
    """

    def __init__(self, kind: str) -> None:
        if kind not in TRANSACTION_TAGS:
            raise ValueError(f"no validation scan for {kind!r}")
        root = Path(__file__).resolve().parents[2]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p),
        }
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "connectors.sepa.writing", "--scan-stdin", kind],
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

    def finish(self) -> PaymentFileTotals:
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
        return PaymentFileTotals.from_json(result)

    def abort(self) -> None:
        """Stop the child (the file is being discarded)."""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()


class _Tee:
    """File object that writes to the ``.part`` file and to the validating child at once."""

    def __init__(self, fh: IO[bytes], scan: ParallelScan) -> None:
        self._fh = fh
        self._scan = scan

    def write(self, data: bytes) -> int:
        self._fh.write(data)
        self._scan.write(data)
        return len(data)


def start_scan(kind: str) -> ParallelScan | None:
    """Start the validating child of a file about to be written; None when no process can start.

    Why a step of its own: the child needs a moment to start (Python, lxml, the schema); a
    caller that still has work before writing (the payout checks) starts it first, so it is
    ready when the first bytes come. Hand it to ``write_validated_part``, or ``abort`` it.
    """
    try:
        return ParallelScan(kind)
    except OSError:
        return None


def write_validated_part(
    final_path: Path,
    kind: str,
    writer: Callable[[IO[bytes]], object],
    scan: ParallelScan | None = None,
) -> tuple[Path, PaymentFileTotals]:
    """Write the ``.part`` file of ``final_path`` while a child process validates the same bytes.

    Returns the part's path and its totals (XSD-valid against the kind's GBIC_5 schema, sums
    re-counted); the caller compares them and publishes. ``scan`` is a child started earlier
    (``start_scan``), else one is started here. Falls back to validating the finished file when
    no child process can start.

    Raises:
        SepaValidationError: the bytes break the schema (the ``.part`` file is removed).
    """
    if scan is None:
        scan = start_scan(kind)
    if scan is None:
        part = write_part(final_path, writer)
        try:
            return part, scan_payment_file(part, kind)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
    try:
        part = write_part(final_path, lambda fh: writer(_Tee(fh, scan)))  # type: ignore[arg-type]
    except BaseException:
        scan.abort()
        raise
    try:
        return part, scan.finish()
    except SepaValidationError as exc:
        message = str(exc)
        if message.startswith("stream: "):  # the child read a stream: find the line in the part
            line = schema_error_line(part, kind)
            message = f"{final_path.name}{f' line {line}' if line else ''}: {message[len('stream: ') :]}"
        part.unlink(missing_ok=True)
        raise SepaValidationError(message) from exc
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def write_checked_part(
    final_path: Path,
    kind: str,
    writer: Callable[[IO[bytes]], object],
    ledger_totals: Callable[[], tuple[int, Decimal]],
    scan: ParallelScan | None = None,
) -> tuple[Path, PaymentFileTotals]:
    """``write_validated_part``, then compare headers, counted sums and the ledger's figures.

    ``ledger_totals`` is asked after writing (the ledger rows are recorded while writing);
    ``scan`` as in ``write_validated_part``. On success the ``.part`` file is ready to ``publish``.

    Raises:
        SepaValidationError: schema violation or any disagreement (the ``.part`` file is removed).
    """
    part, totals = write_validated_part(final_path, kind, writer, scan)
    problems = totals.problems()
    n_ledger, sum_ledger = ledger_totals()
    if (n_ledger, sum_ledger) != (totals.counted_nb_of_txs, totals.counted_ctrl_sum):
        problems.append(
            f"ledger has {n_ledger} entries / {sum_ledger} EUR, file {totals.counted_nb_of_txs} / "
            f"{totals.counted_ctrl_sum}"
        )
    if problems:
        part.unlink(missing_ok=True)
        raise SepaValidationError(f"{final_path.name}: " + "; ".join(problems))
    return part, totals


def block_figures(totals: PaymentFileTotals) -> list[dict[str, object]]:
    """Per block of a checked file: id, count and sum as re-counted (for run summaries)."""
    return [
        {"pmt_inf_id": pid, "nb_of_txs": n, "ctrl_sum": str(s)}
        for pid, (_nh, _sh, n, s) in totals.blocks.items()
    ]


def _scan_stdin(kind: str) -> int:
    """Child side of ``ParallelScan``: scan stdin, always drain it, print one JSON line."""
    stream = sys.stdin.buffer
    try:
        result: dict[str, Any] = scan_payment_file(stream, kind).to_json()
    except SepaValidationError as exc:
        result = {"error": str(exc)}
    while stream.read(1 << 20):  # the writer must never block on a full pipe
        pass
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--scan-stdin" and sys.argv[2] in SCHEMA_FILES:
        raise SystemExit(_scan_stdin(sys.argv[2]))
    raise SystemExit(
        f"usage: python -m connectors.sepa.writing --scan-stdin {{{','.join(TRANSACTION_TAGS)}}}"
    )
