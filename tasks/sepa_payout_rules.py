"""Rules of the payouts by SEPA credit transfer (retained deposits, seed 000), pure functions.

No I/O, no Prefect, no database: each rule takes plain records and returns plain values, so each
can be tested with a table of cases, and the benchmark can run the checks without the ledger.
``check_payout`` decides one payout; ``plan_payouts`` decides a stream of them and groups those to
pay into one payment block per trust account, keeping only what the file needs (memory grows by
the transfers, not by the payouts handed in).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import IO, TYPE_CHECKING, Any, Literal, NamedTuple

from connectors.sepa.pain001 import CreditTransfer, Payout, TransferBlock, write_pain001
from connectors.sepa.writing import (
    MAX_NAME,
    MAX_REMITTANCE,
    amount_cents,
    blanked_characters,
    blanked_warning,
    check_bic,
    check_iban,
    compact_account,
    fault_point,
    fit_text,
    sepa_id_problem,
    transliterate,
    transliterate_many,
)
from tasks.sepa_rules import add_business_days, next_business_day

if TYPE_CHECKING:  # the ledger (SQLAlchemy, pandas) is not needed to decide payouts
    from connectors.sepa.payout_ledger import PaidPayout

Outcome = Literal["pay", "skip", "already_paid"]


class PayoutDecision(NamedTuple):
    """What happens to one payout: paid in this file (with its transfer), skipped, or paid before.

    ``rule`` and ``reason`` name why a payout is skipped or already paid; ``warnings`` what was
    changed on the way (a shortened remittance, a differing trust-account name). A NamedTuple
    (not a dataclass) because one is made per payout, a hundred thousand in a large run.
    """

    payout: Payout
    outcome: Outcome
    transfer: CreditTransfer | None = None
    debtor_name: str = ""
    debtor_iban: str = ""
    debtor_bic: str | None = None
    rule: str | None = None
    reason: str | None = None
    warnings: tuple[str, ...] = ()


PAYOUT_FIELDS = (
    "payout_id",
    "amount",
    "creditor_name",
    "creditor_iban",
    "creditor_bic",
    "debtor_name",
    "debtor_iban",
    "debtor_bic",
    "remittance",
    "reference",
)


def as_payout(item: Payout | Mapping[str, Any]) -> Payout:
    """A ``Payout`` from a ``Payout`` or a plain mapping with its fields (as a flow passes them on).

    Nothing is refused here: a missing text becomes empty, a missing or unreadable amount stays
    as given, so the rules skip that payout with the rule it breaks and the rest go on.
    """
    if isinstance(item, Payout):
        return item
    values: dict[str, Any] = {name: item.get(name) for name in PAYOUT_FIELDS}
    amount = values["amount"]
    if amount is not None and not isinstance(amount, Decimal):
        with contextlib.suppress(ArithmeticError):
            values["amount"] = Decimal(str(amount))
    for name in PAYOUT_FIELDS:
        if name not in ("amount", "creditor_bic", "debtor_bic"):
            values[name] = "" if values[name] is None else str(values[name])
    return Payout(**values)


def _same_or(original: str, value: str) -> str:
    """``original`` itself when equal to ``value`` (a hundred thousand texts need no second copy)."""
    return original if original == value else value


def _name(text: str, role: str, spelled: str | None = None) -> tuple[str | None, str | None]:
    """A party name transliterated (``spelled``, when done already), or the reason it cannot go
    into the file.

    Names are never shortened: the payee's bank compares the name with the account holder, and
    a cut name may not match; a name too long is a payout to fix in the ERP.
    """
    name = _same_or(text, transliterate(text) if spelled is None else spelled)
    if not name:
        return None, f"{role} name {text!r} is empty once transliterated to the SEPA character set"
    if len(name) > MAX_NAME:
        return None, (
            f"{role} name is {len(name)} characters once transliterated ('{name}'); SEPA allows "
            f"{MAX_NAME} and a shortened name may not match the account holder: shorten it in the ERP"
        )
    return name, None


def check_payout(
    payout: Payout, spelled: tuple[str, str, str] | None = None, may_blank: bool = True
) -> PayoutDecision:
    """Check one payout rule by rule; the first broken rule skips it with a reason naming it.

    ``spelled``: creditor name, debtor name and remittance already transliterated (``plan_payouts``
    does it per batch, see ``transliterate_many``); else they are transliterated here.
    ``may_blank``: False when the caller knows no text of this payout has a character without a
    SEPA spelling (``plan_payouts`` looks per batch); else each text is looked at, and a
    character left out becomes a warning naming the payout and the field.

    Rules: ``payout.id`` (the booking id is the EndToEndId: 1-35 characters of the SEPA id set,
    never altered, or the bank statement could not be matched), ``payout.amount`` (0.01 to
    999,999,999.99 EUR, two decimals), ``payout.creditor_iban``/``payout.debtor_iban`` (schwifty:
    check digits, German account check), ``payout.creditor_bic``/``payout.debtor_bic`` (valid,
    same country and bank as the IBAN; empty is fine), ``payout.same_account``,
    ``payout.creditor_name``/``payout.debtor_name`` (transliterated; refused when empty or
    longer than 70). The remittance is transliterated and, above 140 characters, shortened at a
    word boundary with a warning naming the payout and the dropped words (it is information for
    the recipient, not an identity).
    """

    def skip(rule: str, reason: str) -> PayoutDecision:
        return PayoutDecision(payout, "skip", rule=rule, reason=f"payout {payout.payout_id!r}: {reason}")

    if (problem := sepa_id_problem(payout.payout_id)) is not None:
        return skip(
            "payout.id",
            f"the booking id is the EndToEndId and {problem} (it is never changed, or the bank "
            "statement could not be matched): correct the booking id in the ERP",
        )
    cents, error = amount_cents(payout.amount)
    if cents is None:
        return skip("payout.amount", f"{error}; correct the booking amount")
    creditor_iban = compact_account(payout.creditor_iban)
    debtor_iban = compact_account(payout.debtor_iban)
    creditor_bic = _same_or(payout.creditor_bic or "", compact_account(payout.creditor_bic)) or None
    debtor_bic = _same_or(payout.debtor_bic or "", compact_account(payout.debtor_bic)) or None
    if error := check_iban(creditor_iban):
        return skip("payout.creditor_iban", f"creditor {error}; correct the recipient's bank details")
    if error := check_bic(creditor_bic, creditor_iban):
        return skip("payout.creditor_bic", f"creditor {error}; correct or remove the recipient's BIC")
    if error := check_iban(debtor_iban):
        return skip("payout.debtor_iban", f"trust account {error}; correct the object's trust pooled account")
    if error := check_bic(debtor_bic, debtor_iban):
        return skip("payout.debtor_bic", f"trust account {error}; correct or remove its BIC")
    if creditor_iban == debtor_iban:
        return skip("payout.same_account", f"creditor and debtor account are the same ({debtor_iban})")
    creditor_spelled, debtor_spelled, remittance_spelled = spelled or (None, None, None)
    creditor_name, error = _name(payout.creditor_name, "creditor", creditor_spelled)
    if creditor_name is None:
        return skip("payout.creditor_name", error or "")
    debtor_name, error = _name(payout.debtor_name, "debtor", debtor_spelled)
    if debtor_name is None:
        return skip("payout.debtor_name", error or "")
    if remittance_spelled is None:
        remittance_spelled = transliterate(payout.remittance)
    remittance, warning = fit_text(_same_or(payout.remittance, remittance_spelled), MAX_REMITTANCE)
    label = f"payout {payout.payout_id} ({payout.reference})"
    warnings = (f"{label}: remittance {warning}",) if warning else ()
    if may_blank:
        blanked = (
            blanked_warning(f"{label}: {what}", text)
            for what, text in (
                ("creditor name", payout.creditor_name),
                ("debtor name", payout.debtor_name),
                ("remittance", payout.remittance),
            )
        )
        warnings = (*warnings, *(w for w in blanked if w))
    transfer = CreditTransfer(
        payout.payout_id,
        cents,
        creditor_name,
        _same_or(payout.creditor_iban, creditor_iban),
        creditor_bic,
        remittance or None,
    )
    return PayoutDecision(payout, "pay", transfer, debtor_name, debtor_iban, debtor_bic, warnings=warnings)


@dataclass
class PayoutBlockPlan:
    """The payouts of one trust account and execution date (one PmtInf block, ``number`` from 1)."""

    number: int
    debtor_iban: str
    debtor_name: str
    debtor_bic: str | None
    execution_date: date
    transfers: list[CreditTransfer] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    ctrl_sum_cents: int = 0


@dataclass
class PayoutPlan:
    """The blocks of the file to write, the payouts not paid (with their reasons), every warning."""

    execution_date: date
    blocks: list[PayoutBlockPlan]
    not_paid: list[PayoutDecision]
    warnings: list[str]

    @property
    def nb_of_txs(self) -> int:
        """Payouts going into the file."""
        return sum(len(b.transfers) for b in self.blocks)

    @property
    def ctrl_sum_cents(self) -> int:
        """Sum of the file in cents."""
        return sum(b.ctrl_sum_cents for b in self.blocks)

    def count(self, outcome: Outcome) -> int:
        """How many payouts have ``outcome``."""
        if outcome == "pay":
            return self.nb_of_txs
        return sum(1 for d in self.not_paid if d.outcome == outcome)


#: Called with every decision, in input order, and the block a paid payout goes into.
DecisionSink = Callable[[PayoutDecision, PayoutBlockPlan | None], None]


def plan_payouts(
    payouts: Iterable[Payout],
    already: dict[str, PaidPayout],
    execution_date: date,
    on_decision: DecisionSink | None = None,
) -> PayoutPlan:
    """Decide every payout and group those to pay into one block per trust account and date.

    A payout the ledger already holds (``already``) is ``already_paid`` (rule ``payout.ledger``)
    and not written again; a payout id that occurs a second time is skipped (``payout.duplicate``).
    Blocks come in order of first appearance; within a block, payouts keep their input order. A
    block's trust-account name and BIC are its first payout's; a later payout of the same account
    with another name or BIC is paid with a warning saying so. ``on_decision`` sees every decision
    as it is made (the control listing is written from it); the plan keeps only the transfers.
    """
    blocks: dict[str, PayoutBlockPlan] = {}
    not_paid: list[PayoutDecision] = []
    warnings: list[str] = []
    seen: set[str] = set()
    for payout, spelled, may_blank in _spelled_in_batches(payouts):
        paid = already.get(payout.payout_id)
        block: PayoutBlockPlan | None = None
        if paid is not None:
            decision = PayoutDecision(
                payout,
                "already_paid",
                rule="payout.ledger",
                reason=f"payout {payout.payout_id!r} is already in file {paid.msg_id} ({paid.status}, "
                f"execution date {paid.execution_date:%d.%m.%Y}): not written again",
            )
        elif payout.payout_id in seen:
            decision = PayoutDecision(
                payout,
                "skip",
                rule="payout.duplicate",
                reason=f"payout {payout.payout_id!r} occurs more than once in this run: only the first "
                "is paid; check the bookings in the ERP",
            )
        else:
            seen.add(payout.payout_id)
            decision = check_payout(payout, spelled, may_blank)
        transfer = decision.transfer
        if transfer is not None:
            block = blocks.get(decision.debtor_iban)
            if block is None:
                block = blocks[decision.debtor_iban] = PayoutBlockPlan(
                    len(blocks) + 1,
                    decision.debtor_iban,
                    decision.debtor_name,
                    decision.debtor_bic,
                    execution_date,
                )
            elif (block.debtor_name, block.debtor_bic) != (decision.debtor_name, decision.debtor_bic):
                warning = (
                    f"payout {payout.payout_id} ({payout.reference}): trust account {decision.debtor_iban} "
                    f"is named '{decision.debtor_name}' (BIC {decision.debtor_bic}) here but "
                    f"'{block.debtor_name}' (BIC {block.debtor_bic}) in an earlier payout; the file uses the latter"
                )
                decision = PayoutDecision(
                    payout,
                    "pay",
                    transfer,
                    block.debtor_name,
                    block.debtor_iban,
                    block.debtor_bic,
                    warnings=(*decision.warnings, warning),
                )
            block.transfers.append(transfer)
            block.references.append(payout.reference)
            block.ctrl_sum_cents += transfer.amount_cents
        else:
            not_paid.append(decision)
        warnings.extend(decision.warnings)
        if on_decision is not None:
            on_decision(decision, block)
    return PayoutPlan(execution_date, list(blocks.values()), not_paid, warnings)


#: Payouts whose texts are transliterated together (see ``transliterate_many``).
SPELLING_BATCH = 2_000


def _spelled_in_batches(payouts: Iterable[Payout]) -> Iterator[tuple[Payout, tuple[str, str, str], bool]]:
    """Each payout with its creditor name, debtor name and remittance transliterated, a batch at a
    time, and whether any text of its batch has a character that is blanked (then each payout's
    texts are looked at one by one; in the usual batch none is, and none is looked at again)."""
    it = iter(payouts)
    while batch := list(itertools.islice(it, SPELLING_BATCH)):
        creditor_texts = [p.creditor_name for p in batch]
        debtor_texts = [p.debtor_name for p in batch]
        remittance_texts = [p.remittance for p in batch]
        may_blank = bool(blanked_characters("\n".join((*creditor_texts, *debtor_texts, *remittance_texts))))
        creditors = transliterate_many(creditor_texts)
        debtors = transliterate_many(debtor_texts)
        remittances = transliterate_many(remittance_texts)
        for payout, spelled in zip(batch, zip(creditors, debtors, remittances, strict=True), strict=True):
            yield payout, spelled, may_blank


def pmt_inf_id(msg_id: str, block: PayoutBlockPlan) -> str:
    """The block's id: ``<MsgId>-<nnn>`` (at most 35 characters with the 29 of a message id)."""
    return f"{msg_id}-{block.number:03d}"


def transfer_blocks(plan: PayoutPlan, msg_id: str, batch_booking: bool | None) -> list[TransferBlock]:
    """The file's PmtInf blocks with their announced counts and sums."""
    return [
        TransferBlock(
            pmt_inf_id=pmt_inf_id(msg_id, b),
            execution_date=b.execution_date,
            debtor_name=b.debtor_name,
            debtor_iban=b.debtor_iban,
            debtor_bic=b.debtor_bic,
            nb_of_txs=len(b.transfers),
            ctrl_sum_cents=b.ctrl_sum_cents,
            batch_booking=batch_booking,
        )
        for b in plan.blocks
    ]


def write_payout_xml(
    out: IO[bytes],
    plan: PayoutPlan,
    blocks: list[TransferBlock],
    msg_id: str,
    created_at: datetime,
    initiating: str,
) -> tuple[int, int]:
    """Stream the plan's pain.001 document (``blocks`` from ``transfer_blocks``); fault point per transfer."""
    by_id = {block.pmt_inf_id: planned for block, planned in zip(blocks, plan.blocks, strict=True)}

    def transfers(block: TransferBlock) -> Iterator[CreditTransfer]:
        for tx in by_id[block.pmt_inf_id].transfers:
            yield tx
            fault_point("after_tx")

    return write_pain001(out, msg_id, created_at, initiating, blocks, transfers)


def execution_date_for(today: date, lead_days: int = 0) -> date:
    """The requested execution date of a payout file handed in ``today``.

    The next TARGET2 business day (``today`` itself when it is one), plus ``lead_days`` business
    days. Bank cut-off times are not modelled: a file handed in after the cut-off executes a day
    later, which a credit transfer allows.
    """
    return add_business_days(next_business_day(today), lead_days)


LISTING_FIELDS = (
    "outcome",
    "payout_id",
    "reference",
    "amount",
    "execution_date",
    "creditor_name",
    "creditor_iban",
    "creditor_bic",
    "debtor_name",
    "debtor_iban",
    "debtor_bic",
    "remittance",
    "end_to_end_id",
    "msg_id",
    "pmt_inf_id",
    "rule",
    "notes",
)


def listing_row(decision: PayoutDecision, block: PayoutBlockPlan | None, msg_id: str) -> dict[str, str]:
    """One row of the control listing: the payout, its outcome, the texts as they go into the file
    (or as given, when not paid), the rule and every reason or warning."""
    p = decision.payout
    tx = decision.transfer
    notes = [decision.reason] if decision.reason else []
    notes.extend(decision.warnings)
    cents, _error = amount_cents(p.amount)
    return {
        "outcome": decision.outcome,
        "payout_id": p.payout_id,
        "reference": p.reference,
        "amount": str(p.amount) if cents is None else f"{p.amount:.2f}",
        "execution_date": block.execution_date.isoformat() if block else "",
        "creditor_name": tx.creditor_name if tx else p.creditor_name,
        "creditor_iban": tx.creditor_iban if tx else p.creditor_iban,
        "creditor_bic": (tx.creditor_bic if tx else p.creditor_bic) or "",
        "debtor_name": block.debtor_name if block else p.debtor_name,
        "debtor_iban": block.debtor_iban if block else p.debtor_iban,
        "debtor_bic": (block.debtor_bic if block else p.debtor_bic) or "",
        "remittance": (tx.remittance or "") if tx else p.remittance,
        "end_to_end_id": tx.end_to_end_id if tx else "",
        "msg_id": msg_id if block else "",
        "pmt_inf_id": pmt_inf_id(msg_id, block) if block else "",
        "rule": decision.rule or "",
        "notes": " | ".join(notes),
    }
