"""Business rules of the SEPA direct-debit run (seeds 003 DOMUS 1000 and 004 OrgaMon), pure functions.

No I/O and no Prefect here: every rule takes plain records and returns plain values, so each can be
tested with a table of cases. ``decide_claim`` combines them into one decision per claim: debit it
(with the transaction and every warning), put it into quarantine (with the broken rule), or skip it.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache

import holidays
from schwifty import IBAN
from stdnum.eu import at_02

from connectors.sepa.writing import (
    MAX_ID,
    MAX_NAME,
    MAX_REMITTANCE,
    NOTPROVIDED,
    blanked_warning,
    check_amount,
    check_bic,
    check_iban,
    compact_account,
    fit_text,
    is_valid_sepa_id,
    sanitize_id,
    sepa_id_problem,
    to_cents,
    transliterate,
)

# ---------------------------------------------------------------------------------------------
# Character sets and text
# ---------------------------------------------------------------------------------------------

# The SEPA character set, length fitting, amounts and the IBAN/BIC checks are shared with the
# credit-transfer writer: they live in ``connectors/sepa/writing.py`` and are used from there.


# ---------------------------------------------------------------------------------------------
# EndToEndId and remittance (seed 003: Kundenreferenz; seed 004: Ueberweisungstexte)
# ---------------------------------------------------------------------------------------------


#: Runs of ``/``: the EPC rules forbid ``//`` in an id, and a leading or trailing ``/``.
_SLASHES = re.compile(r"/{2,}")


def end_to_end_id(template: str, object_no: str, person_no: str, claim_no: str) -> tuple[str, list[str]]:
    """The customer reference (EndToEndId) of one direct debit.

    The template holds fixed text and the placeholders ``[OBJEKTNUMMER]`` and ``[MIETERNUMMER]``
    (seed 003). An empty template gives ``NOTPROVIDED``. Otherwise the claim number is always
    appended after a ``/``: a tenant is debited every month from the same object, so the template
    alone repeats, and a return debit (which the bank reports only by this id, up to 13 months
    later) could not be told apart. If template plus claim number exceed 35 characters, the
    template part is shortened (with a warning) so the claim number always survives.

    Returns:
        (EndToEndId, warnings)
    """
    if not template.strip():
        return NOTPROVIDED, []
    base = template.replace("[OBJEKTNUMMER]", object_no).replace("[MIETERNUMMER]", person_no)
    base = _SLASHES.sub("/", sanitize_id(base)).strip(" /")
    suffix = _SLASHES.sub("/", sanitize_id(claim_no).replace(" ", "")).strip("/")
    warnings: list[str] = []
    if not suffix:
        raise ValueError(f"claim number {claim_no!r} has no character allowed in a SEPA id")
    room = MAX_ID - len(suffix) - 1
    if room <= 0:
        return suffix[-MAX_ID:], [f"EndToEndId is the claim number only ({claim_no} is long)"]
    if len(base) > room:
        warnings.append(f"EndToEndId prefix '{base}' shortened to '{base[:room]}' to keep the claim number")
        base = base[:room].rstrip(" /")
    value = f"{base}/{suffix}" if base else suffix
    return value, warnings


def system_line(invoice_no: str, invoice_date: date) -> str:
    """The main remittance line of the invoice system (seed 004): ``RECHNUNG 102927 VOM 10.02.10``."""
    return f"RECHNUNG {invoice_no} VOM {invoice_date:%d.%m.%y}"


def remittance_text(
    fixed_lines: tuple[str | None, ...],
    invoice_no: str,
    invoice_date: date,
    booking_text: str | None,
    limit: int = MAX_REMITTANCE,
) -> tuple[str, list[str]]:
    """The unstructured remittance line (Ustrd) of one direct debit.

    Order as in seed 004: up to three fixed lines of the payment type, the system line, then the
    booking text lines (one per line). Lines are transliterated and joined with a space into the
    140 characters SEPA allows. Nothing is cut silently: when it does not fit, the text is
    shortened at a word boundary and the warning says what was dropped.

    Returns:
        (remittance text, warnings)
    """
    lines = [line for line in fixed_lines if line and line.strip()]
    lines.append(system_line(invoice_no, invoice_date))
    if booking_text:
        lines.extend(line for line in booking_text.splitlines() if line.strip())
    parts = [transliterate(line) for line in lines]
    text = " ".join(p for p in parts if p)
    fitted, warning = fit_text(text, limit)
    warnings = [f"remittance {warning}"] if warning else []
    if blanked := blanked_warning("remittance", "\n".join(lines)):
        warnings.append(blanked)
    return fitted, warnings


def debtor_name(account_holder: str) -> tuple[str, list[str]]:
    """The debtor name (at most 70 characters), transliterated; warns when shortened."""
    name, warning = fit_text(transliterate(account_holder), MAX_NAME)
    warnings = [f"debtor name {warning}"] if warning else []
    if blanked := blanked_warning("debtor name", account_holder):
        warnings.append(blanked)
    return name, warnings


# ---------------------------------------------------------------------------------------------
# Dates: TARGET2 calendar and lead time
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _target2_closing_days(year: int) -> frozenset[date]:
    return frozenset(holidays.financial_holidays("XECB", years=year).keys())


def is_target2_business_day(day: date) -> bool:
    """TARGET2 is open: not a weekend, New Year, Good Friday, Easter Monday, 1 May, 25/26 December."""
    return day.weekday() < 5 and day not in _target2_closing_days(day.year)


def next_business_day(day: date) -> date:
    """``day`` itself when TARGET2 is open, else the next day it is."""
    while not is_target2_business_day(day):
        day += timedelta(days=1)
    return day


def add_business_days(day: date, count: int) -> date:
    """The TARGET2 business day ``count`` business days after ``day`` (``day`` need not be one)."""
    for _ in range(count):
        day = next_business_day(day + timedelta(days=1))
    return day


def earliest_collection_date(today: date, lead_days: int = 1) -> date:
    """First collection date a file handed in ``today`` can ask for (CORE: one TARGET2 business day).

    A file submitted on a closing day counts from the next business day. Bank cut-off times
    are not modelled: hand the file in before the bank's cut-off or add a day of lead time.
    """
    return add_business_days(next_business_day(today), lead_days)


@dataclass(frozen=True)
class CollectionDate:
    """The collection date a run will use, and why it differs from the one asked for."""

    requested: date
    effective: date
    warnings: tuple[str, ...] = ()


def effective_collection_date(
    requested: date, today: date, lead_days: int = 1, max_days_ahead: int = 14
) -> CollectionDate:
    """Move a requested collection date to the next possible TARGET2 business day.

    Raises:
        ValueError: the date is more than ``max_days_ahead`` calendar days ahead (banks refuse it).
    """
    warnings = []
    earliest = earliest_collection_date(today, lead_days)
    effective = requested
    if effective < earliest:
        warnings.append(
            f"collection date {requested:%d.%m.%Y} is too early (a file handed in on {today:%d.%m.%Y} "
            f"needs {lead_days} TARGET2 business day lead time): moved to {earliest:%d.%m.%Y}"
        )
        effective = earliest
    if not is_target2_business_day(effective):
        moved = next_business_day(effective)
        warnings.append(
            f"collection date {effective:%d.%m.%Y} is a TARGET2 closing day: moved to {moved:%d.%m.%Y}"
        )
        effective = moved
    if (effective - today).days > max_days_ahead:
        raise ValueError(
            f"collection date {effective:%d.%m.%Y} is more than {max_days_ahead} days ahead of "
            f"{today:%d.%m.%Y}; banks accept CORE direct debits at most {max_days_ahead} days ahead"
        )
    return CollectionDate(requested, effective, tuple(warnings))


# ---------------------------------------------------------------------------------------------
# Checks: creditor identifier, IBAN, BIC, amount
# ---------------------------------------------------------------------------------------------


def check_creditor_id(creditor_id: str) -> str | None:
    """None when the creditor identifier is valid (ISO 7064 MOD 97-10 without the business code)."""
    if not at_02.is_valid(creditor_id):
        return f"creditor identifier {creditor_id!r} is not valid (check digits or format)"
    return None


# ---------------------------------------------------------------------------------------------
# Mandates: sequence type, amendment, lapse
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mandate:
    """A SEPA mandate as the ERP keeps it."""

    mandate_id: str
    person_no: str
    mandate_type: str  # RECURRENT or SINGLE
    iban: str
    bic: str | None
    account_holder: str
    signed_on: date
    first_collection_on: date | None = None
    last_collection_on: date | None = None
    original_iban: str | None = None
    revoked_on: date | None = None


@dataclass(frozen=True)
class MandateHistory:
    """What our own ledger knows about a mandate's use (the ERP may not be updated yet).

    ``last_collection_on``: latest collection date of a file written with it (returned ones excluded);
    ``ibans_collected``: the debtor IBANs it has been collected from.
    """

    last_collection_on: date | None = None
    ibans_collected: frozenset[str] = frozenset()


def last_use(mandate: Mandate, history: MandateHistory) -> date | None:
    """Latest collection with the mandate, from ERP or ledger (None: never used)."""
    dates = [d for d in (mandate.last_collection_on, history.last_collection_on) if d is not None]
    if mandate.first_collection_on is not None:
        dates.append(mandate.first_collection_on)
    return max(dates) if dates else None


def sequence_type(mandate: Mandate, history: MandateHistory) -> str:
    """FRST for the first collection of a recurrent mandate, RCUR afterwards, OOFF for a single mandate.

    Every transaction of one run on a still unused mandate is FRST (they share the collection date).
    """
    if mandate.mandate_type == "SINGLE":
        return "OOFF"
    return "RCUR" if last_use(mandate, history) is not None else "FRST"


def add_months(day: date, months: int) -> date:
    """``day`` plus ``months`` calendar months (the 31st becomes the month's last day)."""
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def mandate_lapsed(
    mandate: Mandate, history: MandateHistory, collection_date: date, months: int = 36
) -> bool:
    """True when the mandate was not used for ``months`` months before ``collection_date``.

    A mandate never used counts from its signature date (documented choice: the rulebook counts
    from the last collection; an unused mandate older than 36 months is treated the same way).
    """
    reference = last_use(mandate, history) or mandate.signed_on
    return collection_date >= add_months(reference, months)


@dataclass(frozen=True)
class Amendment:
    """Amendment details of a changed debtor account (AmdmntInd true)."""

    original_iban: str | None  # same bank: OrgnlDbtrAcct
    smnda: bool  # other bank: OrgnlDbtrAgt = SMNDA


def _bank_key(iban: str) -> str:
    try:
        parsed = IBAN(iban)
        return f"{parsed.country_code}{parsed.bank_code}"
    except ValueError:
        return iban[:4]


def amendment(mandate: Mandate, history: MandateHistory) -> Amendment | None:
    """Amendment to send when the debtor's account changed and has not been collected from yet.

    The ERP records the previous account in ``original_iban``. Once a file with the new IBAN is
    written, the ledger knows it and the amendment is not sent again. A change within the same
    bank sends the original IBAN; a move to another bank sends ``SMNDA`` as original debtor agent.
    """
    if not mandate.original_iban or mandate.original_iban.replace(" ", "") == mandate.iban.replace(" ", ""):
        return None
    if mandate.iban in history.ibans_collected:
        return None
    if _bank_key(mandate.original_iban) == _bank_key(mandate.iban):
        return Amendment(original_iban=mandate.original_iban, smnda=False)
    return Amendment(original_iban=None, smnda=True)


def choose_recurrent_mandate(mandates: list[Mandate], collection_date: date) -> Mandate | None:
    """The person's recurrent mandate to use: the newest one not revoked, else the newest revoked one.

    Returning a revoked mandate (rather than None) lets the caller name the real reason.
    """
    recurrent = [m for m in mandates if m.mandate_type == "RECURRENT"]
    if not recurrent:
        return None
    active = [m for m in recurrent if m.revoked_on is None or m.revoked_on > collection_date]
    pool = active or recurrent
    return max(pool, key=lambda m: (m.signed_on, m.mandate_id))


# ---------------------------------------------------------------------------------------------
# Selection: the three ways of seed 004
# ---------------------------------------------------------------------------------------------


class Way(StrEnum):
    """Why a claim is debited (seed 004: 1 Autozahlung, 2 ELV-Freigabe, 3 explizites Mandat)."""

    AUTO_DEBIT = "1-auto-debit"
    RELEASE_BUDGET = "2-release-budget"
    SINGLE_MANDATE = "3-single-mandate"


def selection_way(
    single_mandate_id: str | None, auto_debit: bool | None, release_amount: Decimal | None
) -> Way | None:
    """Which of the three ways selects a claim; None when it is not debited at all.

    An explicit single mandate wins (exactly that claim, with that mandate); then the payment type
    (every open claim); then a released budget above zero.
    """
    if single_mandate_id:
        return Way.SINGLE_MANDATE
    if auto_debit:
        return Way.AUTO_DEBIT
    if release_amount is not None and Decimal(release_amount) > 0:
        return Way.RELEASE_BUDGET
    return None


class ReleaseBudget:
    """Running budget of way 2: claims of one person, oldest first, while the sum stays within it.

    The released amount limits what is in collection at one time: debits of earlier runs that
    are still waiting for the money (``in_flight_cents``) count against it, so running the debit
    twice does not take the budget twice. Claims arrive ordered by person and due date; the first
    claim that would exceed the budget stops the person's debits for this run (an older claim is
    not jumped over by newer, smaller ones).
    """

    def __init__(self) -> None:
        self._person: str | None = None
        self._used = 0
        self._closed = False

    def take(self, person_no: str, budget: Decimal, amount_cents: int, in_flight_cents: int = 0) -> bool:
        """True when the claim fits into what is left of the person's budget (and books it)."""
        if person_no != self._person:
            self._person, self._used, self._closed = person_no, in_flight_cents, False
        if self._closed:
            return False
        if self._used + amount_cents > to_cents(budget):
            self._closed = True
            return False
        self._used += amount_cents
        return True


# ---------------------------------------------------------------------------------------------
# The decision per claim
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimRecord:
    """One open claim with what the run needs of its person and payment type."""

    claim_no: str
    person_no: str
    object_no: str
    invoice_no: str
    invoice_date: date
    due_date: date
    open_amount: Decimal
    booking_text: str | None = None
    single_mandate_id: str | None = None
    auto_debit: bool = False
    release_amount: Decimal | None = None
    remittance_lines: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class RunContext:
    """Settings of one run that every decision needs."""

    end_to_end_template: str
    lapse_months: int = 36


def claim_collection_date(
    due_date: date, run_date: date, today: date, max_days_ahead: int = 14
) -> date | None:
    """Collection date of one claim: the run's date, or the claim's due date if later.

    A due date after the run's date (claims selected with a look-ahead horizon) is collected on
    its own TARGET2 business day, so payment blocks then differ by date. None: that day is more than
    ``max_days_ahead`` days ahead, the claim waits for a later run.
    """
    day = max(run_date, next_business_day(due_date))
    if (day - today).days > max_days_ahead:
        return None
    return day


@dataclass
class Decision:
    """The outcome for one claim: ``debit``, ``quarantine`` or ``skip``; the listing shows all of them."""

    outcome: str
    claim: ClaimRecord
    way: Way | None
    rule: str | None = None
    reason: str | None = None
    mandate: Mandate | None = None
    sequence_type: str | None = None
    end_to_end_id: str | None = None
    amount_cents: int = 0
    remittance: str | None = None
    debtor_name: str | None = None
    amendment: Amendment | None = None
    warnings: list[str] = field(default_factory=list)


def _quarantine(
    claim: ClaimRecord, way: Way | None, rule: str, what: str, todo: str, **kw: object
) -> Decision:
    reason = f"claim {claim.claim_no} of person {claim.person_no} (object {claim.object_no}): {what}; {todo}"
    return Decision("quarantine", claim, way, rule=rule, reason=reason, **kw)  # type: ignore[arg-type]


def decide_claim(
    claim: ClaimRecord,
    way: Way,
    mandate: Mandate | None,
    history: MandateHistory,
    ctx: RunContext,
    collection_date: date,
    single_mandate_used: bool = False,
) -> Decision:
    """Check one selected claim and build its transaction, or say which rule it breaks.

    Args:
        claim: the claim (already selected by ``selection_way`` and, for way 2, the budget).
        way: how it was selected.
        mandate: the single mandate (way 3) or the person's chosen recurrent mandate (ways 1, 2).
        history: the mandate's use according to our ledger.
        ctx: run settings.
        collection_date: the claim's collection date (revocation, signature and lapse refer to it).
        single_mandate_used: the single mandate was already collected (ledger), OOFF allows one use.

    Returns:
        ``Decision`` with outcome ``debit`` or ``quarantine`` (rule names start with ``sepa.``).
    """
    amount_error = check_amount(claim.open_amount)
    if amount_error:
        return _quarantine(claim, way, "sepa.amount", amount_error, "correct the open amount in the ERP")
    cents = to_cents(claim.open_amount)
    if mandate is None:
        missing = (
            f"single mandate {claim.single_mandate_id} not found"
            if claim.single_mandate_id
            else "no SEPA mandate"
        )
        return _quarantine(
            claim, way, "sepa.mandate.missing", missing, "record a signed mandate or change the payment type"
        )
    kw: dict[str, object] = {"mandate": mandate, "amount_cents": cents}
    if mandate.person_no != claim.person_no:
        return _quarantine(
            claim,
            way,
            "sepa.mandate.person",
            f"mandate {mandate.mandate_id} belongs to person {mandate.person_no}",
            "attach the debtor's own mandate",
            **kw,
        )
    if (id_problem := sepa_id_problem(mandate.mandate_id)) is not None:
        return _quarantine(
            claim,
            way,
            "sepa.mandate.id",
            f"mandate id {mandate.mandate_id!r} {id_problem}",
            "renumber the mandate (A-Z, 0-9, + ? / - : ( ) . , ' and space, at most 35)",
            **kw,
        )
    if mandate.revoked_on is not None and mandate.revoked_on <= collection_date:
        return _quarantine(
            claim,
            way,
            "sepa.mandate.revoked",
            f"mandate {mandate.mandate_id} was revoked on {mandate.revoked_on:%d.%m.%Y}",
            "ask the debtor for a new mandate or for a transfer",
            **kw,
        )
    if mandate.signed_on > collection_date:
        return _quarantine(
            claim,
            way,
            "sepa.mandate.not_signed",
            f"mandate {mandate.mandate_id} is signed only on {mandate.signed_on:%d.%m.%Y}",
            "collect after the signature date",
            **kw,
        )
    if way == Way.SINGLE_MANDATE and single_mandate_used:
        return _quarantine(
            claim,
            way,
            "sepa.mandate.single_used",
            f"single mandate {mandate.mandate_id} was already collected",
            "a single (OOFF) mandate allows one collection: get a new mandate",
            **kw,
        )
    if mandate.mandate_type != "SINGLE" and mandate_lapsed(
        mandate, history, collection_date, ctx.lapse_months
    ):
        used = last_use(mandate, history)
        since = (
            f"last used {used:%d.%m.%Y}"
            if used
            else f"never used since signature {mandate.signed_on:%d.%m.%Y}"
        )
        return _quarantine(
            claim,
            way,
            "sepa.mandate.lapsed",
            f"mandate {mandate.mandate_id} lapsed: {since}, more than {ctx.lapse_months} months",
            "a new mandate is needed",
            **kw,
        )
    iban = compact_account(mandate.iban)
    iban_error = check_iban(iban)
    if iban_error:
        return _quarantine(
            claim,
            way,
            "sepa.iban",
            f"{iban_error} (mandate {mandate.mandate_id})",
            "correct the IBAN of the mandate",
            **kw,
        )
    bic = compact_account(mandate.bic) or None
    bic_error = check_bic(bic, iban)
    if bic_error:
        return _quarantine(
            claim,
            way,
            "sepa.bic",
            f"{bic_error} (mandate {mandate.mandate_id})",
            "correct or remove the BIC of the mandate",
            **kw,
        )
    warnings: list[str] = []
    e2e, w = end_to_end_id(ctx.end_to_end_template, claim.object_no, claim.person_no, claim.claim_no)
    warnings += w
    text, w = remittance_text(
        claim.remittance_lines, claim.invoice_no, claim.invoice_date, claim.booking_text
    )
    warnings += w
    name, w = debtor_name(mandate.account_holder)
    warnings += w
    if not name:
        return _quarantine(
            claim,
            way,
            "sepa.name",
            "account holder name is empty after transliteration",
            "enter the account holder",
            **kw,
        )
    amend = amendment(mandate, history) if mandate.mandate_type != "SINGLE" else None
    if amend is not None:
        warnings.append(
            "debtor account changed: amendment with "
            + (f"original IBAN {amend.original_iban}" if amend.original_iban else "SMNDA (other bank)")
        )
    return Decision(
        "debit",
        claim,
        way,
        mandate=replace(mandate, iban=iban, bic=bic),
        sequence_type=sequence_type(mandate, history),
        end_to_end_id=e2e,
        amount_cents=cents,
        remittance=text or None,
        debtor_name=name,
        amendment=amend,
        warnings=warnings,
    )


# ---------------------------------------------------------------------------------------------
# Identifiers and listing rows
# ---------------------------------------------------------------------------------------------


def make_msg_id(created_at: datetime, run_token: str, index: int, prefix: str = "HF") -> str:
    """Message id of file ``index`` of a run: prefix + UTC time (24-hour clock) + run token + number.

    29 characters, so payment block ids (``<MsgId>-001``) stay within 35. Unique per file as long
    as run tokens are unique (the flow run id). Direct debits use ``HF``, payouts ``HP``, so a
    debit and a payout file of one run never share a message id (banks refuse a repeated one).
    """
    if len(prefix) != 2 or not is_valid_sepa_id(prefix):
        raise ValueError(f"message id prefix {prefix!r} must be two id characters")
    if created_at.tzinfo is None:
        raise ValueError("created_at must be timezone-aware")
    token = sanitize_id(run_token).replace(" ", "")[:8].ljust(8, "0")
    return f"{prefix}{created_at.astimezone(UTC):%Y%m%d%H%M%S}-{token}-{index + 1:03d}"


def mask_iban(iban: str | None) -> str:
    """IBAN with the middle hidden (``DE02********2051``), for logs and the UI."""
    if not iban:
        return ""
    return iban[:4] + "*" * max(len(iban) - 8, 0) + iban[-4:]


LISTING_FIELDS = (
    "outcome",
    "way",
    "claim_no",
    "person_no",
    "object_no",
    "invoice_no",
    "due_date",
    "collection_date",
    "amount",
    "mandate_id",
    "sequence_type",
    "amendment",
    "end_to_end_id",
    "debtor_name",
    "iban",
    "rule",
    "warnings",
)


def listing_row(decision: Decision, collection_date: date | None) -> dict[str, str]:
    """One row of the control listing: who, how much, which mandate, and every warning or reason."""
    claim = decision.claim
    mandate = decision.mandate
    amend = decision.amendment
    notes = list(decision.warnings)
    if decision.reason:
        notes.insert(0, decision.reason)
    return {
        "outcome": decision.outcome,
        "way": decision.way.value if decision.way else "",
        "claim_no": claim.claim_no,
        "person_no": claim.person_no,
        "object_no": claim.object_no,
        "invoice_no": claim.invoice_no,
        "due_date": claim.due_date.isoformat(),
        "collection_date": collection_date.isoformat() if collection_date else "",
        "amount": f"{Decimal(claim.open_amount):.2f}"
        if check_amount(claim.open_amount) is None
        else str(claim.open_amount),
        "mandate_id": mandate.mandate_id if mandate else "",
        "sequence_type": decision.sequence_type or "",
        "amendment": ("SMNDA" if amend.smnda else f"IBAN {amend.original_iban}") if amend else "",
        "end_to_end_id": decision.end_to_end_id or "",
        "debtor_name": decision.debtor_name or (transliterate(mandate.account_holder) if mandate else ""),
        "iban": mandate.iban if mandate else "",
        "rule": decision.rule or "",
        "warnings": " | ".join(notes),
    }


# ---------------------------------------------------------------------------------------------
# Reconciliation (seed 004: "Kontenabgleich", return debits by EndToEndId)
# ---------------------------------------------------------------------------------------------

#: ISO 20022 return reason codes of SEPA direct debits, with what they mean for the property manager.
RETURN_REASONS: dict[str, str] = {
    "AC01": "account identifier incorrect (wrong IBAN)",
    "AC04": "account closed",
    "AC06": "account blocked",
    "AC13": "debtor account is a consumer account (B2B not allowed)",
    "AG01": "direct debits forbidden on this account",
    "AG02": "invalid bank operation code",
    "AM04": "insufficient funds",
    "AM05": "duplicate collection",
    "BE05": "creditor identifier unknown to the debtor's bank",
    "CNOR": "creditor bank not registered",
    "DNOR": "debtor bank not registered",
    "FF01": "invalid file format",
    "MD01": "no valid mandate",
    "MD02": "mandate data missing or wrong",
    "MD06": "refund requested by the debtor (within 8 weeks)",
    "MD07": "debtor deceased",
    "MS02": "refused by the debtor",
    "MS03": "reason not specified by the bank",
    "RC01": "BIC incorrect",
    "RR01": "regulatory: debtor account or identification missing",
    "RR02": "regulatory: debtor name or address missing",
    "RR03": "regulatory: creditor name or address missing",
    "RR04": "regulatory reason",
    "SL01": "specific service of the debtor's bank (debit blocked by the debtor)",
}

#: Sub-family codes of the bank transaction code that mean a returned or reversed direct debit.
RETURN_SUBFAMILIES = frozenset({"UPDD", "RRTN", "PRDD", "RPCR"})


def return_reason_text(code: str | None) -> str:
    """Plain-words meaning of a return reason code (unknown codes are named as such)."""
    if not code:
        return "no reason code given"
    return RETURN_REASONS.get(code, f"reason code {code} (see the ISO external code list)")


def classify_entry(
    status: str, credit_debit: str, reversal: bool, bank_code: str, has_return_info: bool
) -> str:
    """What a statement entry is for the direct-debit reconciliation.

    Returns:
        ``pending`` (not booked yet: never acted on), ``return`` (money taken back: a debit entry
        with return information, a return sub-family code, or a reversal), ``collection`` (money
        in), or ``other`` (some other debit on the account).
    """
    if status != "BOOK":
        return "pending"
    subfamily = bank_code.rsplit("/", 1)[-1] if bank_code else ""
    if credit_debit == "DBIT" and (has_return_info or reversal or subfamily in RETURN_SUBFAMILIES):
        return "return"
    if credit_debit == "CRDT" and reversal:
        return "return"
    if credit_debit == "CRDT":
        return "collection"
    return "other"


def settle_amount(expected: Decimal, already_paid: Decimal, received: Decimal) -> tuple[str, Decimal]:
    """Outcome of money received for one collected claim.

    Returns:
        (``paid`` | ``partly_paid`` | ``overpaid``, total received so far). ``overpaid`` changes
        nothing: more money than collected needs a person to look at it.
    """
    total = already_paid + received
    if total == expected:
        return "paid", total
    if total < expected:
        return "partly_paid", total
    return "overpaid", already_paid
