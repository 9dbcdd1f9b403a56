"""Benchmark: build and validate SEPA files (pain.008 direct debits, pain.001 payouts) with hausflow and sepaxml.

Both get the same synthetic transactions (already transliterated, so sepaxml runs with
``clean=False``). hausflow streams the file with ``connectors/sepa/pain008.py`` (split above 500,000
transactions, atomic rename) while a child process validates the same bytes streaming against the
DK GBIC_5 schema and re-counts every control sum (``write_validated_part``, as in the debit run). sepaxml builds its tree and validates with its own schema via
xmlschema (its element limit raised so it can finish). Each side runs in a child process so that
peak memory (``ru_maxrss``) is its own.

The same for credit transfers (``--payouts``, default 100,000): hausflow takes ``Payout`` records
with raw German texts, checks every one (transliteration, lengths, IBAN and BIC with schwifty),
groups them and streams ``pain.001.001.09`` (``connectors/sepa/pain001.py``) while the child
validates against ``pain.001.001.09_GBIC_5.xsd``; sepaxml gets already clean texts, builds its
``pain.001.001.09`` tree and validates it (``SepaTransfer.export(validate=True)``). The speedup
compares like with like, build and validation (``payout_s``); ``payout_checked_s`` is hausflow's
time with its checks, which sepaxml does not make, as the payout task runs them. Both sides pay
from one trust account (sepaxml can hold only one debtor account per file). ``--payout-task``
also times the whole payout task with its SQLite ledger and control listing.

    .venv/bin/python bench/sepa.py                       # 100,000 transactions and 100,000 payouts, both
    .venv/bin/python bench/sepa.py --transactions 1000000 --skip-sepaxml --payouts 0

Human lines first, one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

IBANS = [
    ("DE50120300001234567897", "BYLADEM1001"),
    ("DE84100100101234567898", "PBNKDEFFXXX"),
    ("DE91500105171234567900", "INGDDEFFXXX"),
    ("DE62370400440532013001", "COBADEFFXXX"),
]
CREDITOR = {
    "name": "Hausverwaltung Muster GmbH",
    "IBAN": "DE02120300000000202051",
    "BIC": "BYLADEM1001",
    "creditor_id": "DE98ZZZ09999999999",
}
COLLECTION = date(2026, 3, 4)
MAX_PER_FILE = 500_000


def _seq(i: int) -> str:
    return "FRST" if i % 10 == 0 else "RCUR"


def _cents(i: int) -> int:
    return 50_000 + (i * 7919) % 150_000


def synthetic(
    start: int, stop: int, seq: str | None = None
) -> Iterator[tuple[str, int, str, str, str, str, str, str]]:
    """Deterministic transactions: (sequence type, cents, e2e, mandate, name, iban, bic, remittance).

    With ``seq`` only those of one sequence type (what the real run's per-block spool gives).
    """
    if seq == "FRST":
        indexes: Iterator[int] | range = range(start + (-start) % 10, stop, 10)
    elif seq == "RCUR":
        indexes = (i for i in range(start, stop) if i % 10)
    else:
        indexes = range(start, stop)
    for i in indexes:
        iban, bic = IBANS[i % len(IBANS)]
        yield (
            _seq(i),
            _cents(i),
            f"O{i % 997:04d}-P{i:07d}/C{i:08d}",
            f"M-P{i:07d}",
            f"Mieter {i:07d} Mueller-Luedenscheidt",
            iban,
            bic,
            f"HAUSVERWALTUNG MUSTER Mietkonto RECHNUNG {100000 + i} VOM 10.02.26 Miete Maerz 2026 Wohnung {i % 40}",
        )


def _peak_mb() -> float:
    """Peak resident memory of this process or any finished child (the validating child), MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024  # Linux: KiB


def run_hausflow(n: int, folder: Path) -> dict[str, float | int]:
    """Write the file(s) streaming and validate them streaming; returns seconds, peak MB, totals."""
    from connectors.sepa.pain008 import Creditor, DebitTransaction, PaymentBlock, write_pain008
    from connectors.sepa.schemas import load_schema
    from connectors.sepa.writing import publish, write_validated_part

    load_schema("pain.008")  # compiled once per process, like in a flow run; counted below anyway
    started = time.perf_counter()
    creditor = Creditor(CREDITOR["name"], CREDITOR["IBAN"], CREDITOR["BIC"], CREDITOR["creditor_id"])
    signed = date(2024, 1, 15)
    counted = 0
    counted_cents = 0
    for file_index, start in enumerate(range(0, n, MAX_PER_FILE)):
        size = min(MAX_PER_FILE, n - start)
        # announced figures: the planning pass of the real run counts them; here from the generator
        figures: dict[str, list[int]] = {"FRST": [0, 0], "RCUR": [0, 0]}
        for i in range(start, start + size):
            figures[_seq(i)][0] += 1
            figures[_seq(i)][1] += _cents(i)
        msg_id = f"HF20260302090000-bench000-{file_index + 1:03d}"
        blocks = [
            PaymentBlock(f"{msg_id}-{k + 1:03d}", COLLECTION, seq, figures[seq][0], figures[seq][1])
            for k, seq in enumerate(("FRST", "RCUR"))
        ]

        def transactions(
            block: PaymentBlock, start: int = start, size: int = size
        ) -> Iterator[DebitTransaction]:
            for _s, cents, e2e, mandate, name, iban, bic, text in synthetic(
                start, start + size, block.sequence_type
            ):
                yield DebitTransaction(e2e, cents, mandate, signed, name, iban, bic, text)

        path = folder / f"{msg_id}.xml"
        part, totals = write_validated_part(
            path,
            "pain.008",
            lambda fh, msg_id=msg_id, blocks=blocks, transactions=transactions: write_pain008(
                fh, msg_id, datetime.now(UTC), creditor, blocks, transactions
            ),
        )
        publish(part, path)
        if totals.problems():
            raise SystemExit(f"hausflow file does not add up: {totals.problems()}")
        counted += totals.counted_nb_of_txs
        counted_cents += int(totals.counted_ctrl_sum * 100)
        path.unlink()
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "peak_mb": _peak_mb(), "transactions": counted, "cents": counted_cents}


def run_sepaxml(n: int) -> dict[str, float | int]:
    """sepaxml 2.7.0: build the whole document, export with validation (xmlschema, limit raised)."""
    import xmlschema.limits
    from sepaxml import SepaDD

    xmlschema.limits.MAX_XML_ELEMENTS = 10**9  # default stops at about 55,000 transactions
    started = time.perf_counter()
    sepa = SepaDD(
        {**CREDITOR, "batch": True, "currency": "EUR", "instrument": "CORE"},
        schema="pain.008.001.08",
        clean=False,
    )
    cents_total = 0
    for seq, cents, e2e, mandate, name, iban, bic, text in synthetic(0, n):
        cents_total += cents
        sepa.add_payment(
            {
                "name": name,
                "IBAN": iban,
                "BIC": bic,
                "amount": cents,
                "type": seq,
                "collection_date": COLLECTION,
                "mandate_id": mandate,
                "mandate_date": date(2024, 1, 15),
                "description": text,
                "endtoend_id": e2e,
            }
        )
    return _sepaxml_export(sepa, started, n, cents_total)


TRUST = ("DE02120300000000202051", "BYLADEM1001", "Treuhandsammelkonto Musterstraße 1")
EXECUTION = date(2026, 3, 2)


def synthetic_payouts(n: int) -> Iterator[tuple[str, int, str, str, str, str, str]]:
    """Deterministic payouts: (payout id, cents, creditor name, iban, bic, remittance, reference).

    Texts as an ERP holds them (umlauts, ß, &): hausflow transliterates them, sepaxml gets
    ``_clean`` copies.
    """
    for i in range(n):
        iban, bic = IBANS[i % len(IBANS)]
        yield (
            f"BK-{i:08d}",
            10_000 + (i * 7919) % 250_000,
            f"Eigentümer {i:07d} Müller-Lüdenscheidt & Söhne",
            iban,
            bic,
            f"Kautionseinbehalt Mietvertrag V-{i:07d} Objekt O{i % 997:04d} Schäden Küche und Bad",
            f"V-{i:07d}/O{i % 997:04d}",
        )


def _clean(text: str) -> str:
    return text.replace("ü", "ue").replace("ß", "ss").replace("&", "+").replace("ä", "ae")


def make_payouts(n: int) -> Iterator[object]:
    """The ``Payout`` records the deposit flow would hand in, one after the other."""
    from decimal import Decimal

    from connectors.sepa.pain001 import Payout

    for pid, cents, name, iban, bic, text, ref in synthetic_payouts(n):
        yield Payout(pid, Decimal(cents).scaleb(-2), name, iban, bic, TRUST[2], TRUST[0], TRUST[1], text, ref)


def run_hausflow_payouts(n: int, folder: Path) -> dict[str, float | int]:
    """Payout records -> rules (checks, transliteration) -> streamed pain.001 validated in the child.

    Timed twice in this process: ``checked_seconds`` as the payout task does it (the child
    started first, then the checks, then the file); ``seconds`` the file built and validated
    again from the checked transfers, the work sepaxml does (it gets clean texts, checks no
    account): the comparison of like with like, as for pain.008 above.
    """
    from connectors.sepa.schemas import load_schema
    from connectors.sepa.writing import check_bic, publish, start_scan, write_validated_part
    from tasks.sepa_payout_rules import plan_payouts, transfer_blocks, write_payout_xml

    load_schema("pain.001")  # once per process, like in a flow run (as for pain.008 above)
    check_bic(TRUST[1], TRUST[0])  # the bank registry, loaded once per process by schwifty
    started = time.perf_counter()
    scan = start_scan("pain.001")  # as write_payouts: the child starts before the checks
    plan = plan_payouts(make_payouts(n), {}, EXECUTION)  # type: ignore[arg-type]
    if plan.nb_of_txs != n:
        raise SystemExit(f"only {plan.nb_of_txs} of {n} payouts passed the checks")
    checks_s = time.perf_counter() - started
    msg_id = "HP20260302090000-bench000-001"

    def build_and_validate(scan: Any) -> Any:
        blocks = transfer_blocks(plan, msg_id, False)
        path = folder / f"{msg_id}.xml"
        part, totals = write_validated_part(
            path,
            "pain.001",
            lambda fh: write_payout_xml(
                fh, plan, blocks, msg_id, datetime.now(UTC), "Hausverwaltung Muster GmbH"
            ),
            scan,
        )
        publish(part, path)
        if totals.problems():
            raise SystemExit(f"hausflow payout file does not add up: {totals.problems()}")
        path.unlink()
        return totals

    build_and_validate(scan)
    checked_s = time.perf_counter() - started
    started = time.perf_counter()
    totals = build_and_validate(start_scan("pain.001"))
    return {
        "seconds": time.perf_counter() - started,
        "checks_seconds": checks_s,
        "checked_seconds": checked_s,
        "peak_mb": _peak_mb(),
        "transactions": totals.counted_nb_of_txs,
        "cents": int(totals.counted_ctrl_sum * 100),
    }


def run_sepaxml_payouts(n: int) -> dict[str, float | int]:
    """sepaxml 2.7.0 ``SepaTransfer``, ``pain.001.001.09``: build the tree, export with validation."""
    import xmlschema.limits
    from sepaxml import SepaTransfer

    xmlschema.limits.MAX_XML_ELEMENTS = 10**9
    started = time.perf_counter()
    sepa = SepaTransfer(
        {"name": _clean(TRUST[2]), "IBAN": TRUST[0], "BIC": TRUST[1], "batch": True, "currency": "EUR"},
        schema="pain.001.001.09",
        clean=False,
    )
    cents_total = 0
    for pid, cents, name, iban, bic, text, _ref in synthetic_payouts(n):
        cents_total += cents
        sepa.add_payment(
            {
                "name": _clean(name),
                "IBAN": iban,
                "BIC": bic,
                "amount": cents,
                "execution_date": EXECUTION,
                "description": _clean(text),
                "endtoend_id": pid,
            }
        )
    return _sepaxml_export(sepa, started, n, cents_total)


def run_payout_task(n: int, folder: Path) -> dict[str, float | int]:
    """The whole payout task (plain steps): lock, recovery, checks, listing, ledger (SQLite), file."""
    import os

    os.environ.update(
        {
            "HAUSFLOW_STATE_URL": f"sqlite:///{folder}/state.sqlite",
            "HAUSFLOW_BUSINESS_DATE": EXECUTION.isoformat(),
            "HAUSFLOW_SEPA__PAYOUTS__OUTPUT_DIR": str(folder / "payouts"),
        }
    )
    from config.settings import load_settings
    from tasks.sepa_payouts import write_payouts

    payouts = list(make_payouts(n))  # the task takes a list, as the deposit flow hands it in
    started = time.perf_counter()
    summary = write_payouts(load_settings(), payouts, "benchrun", False)  # type: ignore[arg-type]
    return {
        "seconds": time.perf_counter() - started,
        "peak_mb": _peak_mb(),
        "transactions": summary["number"],
    }


def _sepaxml_export(sepa: Any, started: float, n: int, cents_total: int) -> dict[str, float | int]:
    """sepaxml's export with its validation on; the figures of its side."""
    out = sepa.export(validate=True)
    elapsed = time.perf_counter() - started
    return {
        "seconds": elapsed,
        "peak_mb": _peak_mb(),
        "transactions": n,
        "cents": cents_total,
        "bytes": len(out),
    }


def build_erp(n: int, folder: Path) -> dict[str, float | int]:
    """A synthetic SQLite ERP: n tenants on auto-debit, one mandate and one open claim each."""
    from sqlalchemy import insert

    from connectors.erp.database import create_erp_schema, make_engine
    from connectors.erp.schema import claims, objects, payment_types, persons, sepa_mandates

    started = time.perf_counter()
    engine = make_engine(f"sqlite:///{folder}/erp.sqlite")
    create_erp_schema(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(payment_types).values(
                code="LS", name="Lastschrift", auto_debit=True, remittance_line1="HAUSVERWALTUNG MUSTER"
            )
        )
        conn.execute(insert(objects), [{"object_no": f"O{o:04d}", "name": f"Objekt {o}"} for o in range(997)])
    step = 50_000
    for start in range(0, n, step):
        idx = range(start, min(start + step, n))
        with engine.begin() as conn:
            conn.execute(
                insert(persons),
                [
                    {
                        "person_no": f"P{i:07d}",
                        "person_type": "MIETER",
                        "last_name": f"Müller {i}",
                        "anonymised": False,
                        "payment_type_code": "LS",
                    }
                    for i in idx
                ],
            )
            conn.execute(
                insert(sepa_mandates),
                [
                    {
                        "mandate_id": f"M-P{i:07d}",
                        "person_no": f"P{i:07d}",
                        "mandate_type": "RECURRENT",
                        "iban": IBANS[i % len(IBANS)][0],
                        "bic": IBANS[i % len(IBANS)][1],
                        "account_holder": f"Mieter {i:07d} Müller-Lüdenscheidt",
                        "signed_on": date(2024, 1, 15),
                        "last_collection_on": None if i % 10 == 0 else date(2026, 2, 3),
                    }
                    for i in idx
                ],
            )
            conn.execute(
                insert(claims),
                [
                    {
                        "claim_no": f"C{i:08d}",
                        "person_no": f"P{i:07d}",
                        "object_no": f"O{i % 997:04d}",
                        "invoice_no": str(100000 + i),
                        "invoice_date": date(2026, 2, 10),
                        "due_date": date(2026, 3, 1),
                        "amount": _cents(i) / 100,
                        "open_amount": _cents(i) / 100,
                        "booking_text": f"Miete März 2026\nWohnung {i % 40}",
                        "status": "OPEN",
                    }
                    for i in idx
                ],
            )
    engine.dispose()
    return {"seconds": time.perf_counter() - started, "peak_mb": _peak_mb()}


def run_pipeline(n: int, folder: Path) -> dict[str, float | int]:
    """The whole debit run (plain steps, no Prefect): select, check, listing, spool, files, ledger, ERP."""
    import os

    os.environ.update(
        {
            "HAUSFLOW_ERP_URL": f"sqlite:///{folder}/erp.sqlite",
            "HAUSFLOW_STATE_URL": f"sqlite:///{folder}/state.sqlite",
            "HAUSFLOW_BUSINESS_DATE": "2026-03-02",
            "HAUSFLOW_SEPA__OUTPUT_DIR": str(folder / "out"),
        }
    )
    from config.settings import load_settings
    from tasks.sepa_run import finish_debit_run, plan_debits, start_debit_run, write_debit_files

    started = time.perf_counter()
    run = start_debit_run(load_settings(), COLLECTION, None, False, run_id="benchrun")
    plan = plan_debits(run)
    planned = time.perf_counter()
    files = write_debit_files(run, plan)
    finish_debit_run(run)
    done = time.perf_counter()
    return {
        "seconds": done - started,
        "plan_s": planned - started,
        "write_s": done - planned,
        "peak_mb": _peak_mb(),
        "transactions": sum(int(f["nb_of_txs"]) for f in files),
        "files": len(files),
    }


def payout_comparison(n: int) -> dict[str, object]:
    """Run both payout sides in their own processes, print the human lines, return the JSON keys."""
    print(f"pain.001.001.09, {n:,} payouts, build + XSD validation, each side in its own process")
    ours = _child("payouts", n)
    print(
        f"hausflow: {ours['seconds']:.2f} s, peak {ours['peak_mb']:.1f} MB "
        f"(streaming writer, GBIC_5 validation in a child, sums re-counted); with its payout checks "
        f"(IBAN and BIC, transliteration, lengths: {ours['checks_seconds']:.2f} s) as the payout task "
        f"runs them: {ours['checked_seconds']:.2f} s"
    )
    theirs = _child("sepaxml_payouts", n)
    if (theirs["cents"], theirs["transactions"]) != (ours["cents"], ours["transactions"]):
        raise SystemExit("the two payout sides did not process the same payouts")
    speedup = float(theirs["seconds"]) / float(ours["seconds"])
    checked_speedup = float(theirs["seconds"]) / float(ours["checked_seconds"])
    print(
        f"sepaxml:  {theirs['seconds']:.2f} s, peak {theirs['peak_mb']:.1f} MB (tree, xmlschema validation)"
    )
    print(
        f"speedup:  {speedup:.1f}x (with hausflow's checks, which sepaxml does not make: {checked_speedup:.1f}x)"
    )
    return {
        "payouts": n,
        "payout_s": round(float(ours["seconds"]), 3),
        "payout_checked_s": round(float(ours["checked_seconds"]), 3),
        "payout_peak_mb": round(float(ours["peak_mb"]), 1),
        "sepaxml_payout_s": round(float(theirs["seconds"]), 3),
        "payout_speedup": round(speedup, 1),
        "payout_checked_speedup": round(checked_speedup, 1),
    }


def _child(kind: str, n: int, folder: Path | None = None) -> dict[str, float | int]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--transactions", str(n)]
    if folder is not None:
        cmd += ["--folder", str(folder)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    """Parse arguments; as parent run both workers and report, as worker run one side."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=100_000)
    parser.add_argument("--skip-sepaxml", action="store_true", help="only hausflow (e.g. for 1,000,000)")
    parser.add_argument(
        "--pipeline", action="store_true", help="also time the whole debit run on a synthetic SQLite ERP"
    )
    parser.add_argument("--payouts", type=int, default=100_000, help="payouts for pain.001 (0: skip)")
    parser.add_argument(
        "--payout-task", action="store_true", help="also time the whole payout task (ledger, listing)"
    )
    parser.add_argument(
        "--worker",
        choices=["hausflow", "sepaxml", "erp", "pipeline", "payouts", "sepaxml_payouts", "payout_task"],
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker in ("erp", "pipeline"):
        work = build_erp if args.worker == "erp" else run_pipeline
        print(json.dumps(work(args.transactions, Path(args.folder))))
        return
    if args.worker == "hausflow":
        with tempfile.TemporaryDirectory(prefix="hausflow-bench-") as tmp:
            print(json.dumps(run_hausflow(args.transactions, Path(tmp))))
        return
    if args.worker == "sepaxml":
        print(json.dumps(run_sepaxml(args.transactions)))
        return
    if args.worker in ("payouts", "payout_task"):
        work = run_hausflow_payouts if args.worker == "payouts" else run_payout_task
        with tempfile.TemporaryDirectory(prefix="hausflow-bench-") as tmp:
            print(json.dumps(work(args.transactions, Path(tmp))))
        return
    if args.worker == "sepaxml_payouts":
        print(json.dumps(run_sepaxml_payouts(args.transactions)))
        return

    n = args.transactions
    print(f"pain.008.001.08, {n:,} transactions, build + XSD validation, each side in its own process")
    hausflow = _child("hausflow", n)
    print(
        f"hausflow: {hausflow['seconds']:.2f} s, peak {hausflow['peak_mb']:.1f} MB "
        f"(streaming writer, streaming validation against the DK GBIC_5 schema, sums re-counted)"
    )
    result: dict[str, object] = {
        "transactions": n,
        "hausflow_s": round(float(hausflow["seconds"]), 3),
        "hausflow_peak_mb": round(float(hausflow["peak_mb"]), 1),
        "sepaxml_s": None,
        "sepaxml_peak_mb": None,
        "speedup": None,
    }
    if args.pipeline:
        with tempfile.TemporaryDirectory(prefix="hausflow-pipeline-") as tmp:
            erp = _child("erp", n, Path(tmp))
            print(f"synthetic ERP with {n:,} open claims built in {erp['seconds']:.1f} s")
            pipe = _child("pipeline", n, Path(tmp))
        print(
            f"whole debit run: {pipe['seconds']:.1f} s (plan {pipe['plan_s']:.1f} s, files {pipe['write_s']:.1f} s), "
            f"peak {pipe['peak_mb']:.1f} MB, {pipe['transactions']:,} debits in {pipe['files']} file(s)"
        )
        result.update(
            pipeline_s=round(float(pipe["seconds"]), 1), pipeline_peak_mb=round(float(pipe["peak_mb"]), 1)
        )
    if not args.skip_sepaxml:
        sepaxml = _child("sepaxml", n)
        if sepaxml["cents"] != hausflow["cents"] or sepaxml["transactions"] != hausflow["transactions"]:
            raise SystemExit("the two sides did not process the same transactions")
        speedup = float(sepaxml["seconds"]) / float(hausflow["seconds"])
        print(
            f"sepaxml:  {sepaxml['seconds']:.2f} s, peak {sepaxml['peak_mb']:.1f} MB "
            f"(tree in memory, xmlschema validation with MAX_XML_ELEMENTS raised)"
        )
        print(f"speedup:  {speedup:.1f}x")
        result.update(
            sepaxml_s=round(float(sepaxml["seconds"]), 3),
            sepaxml_peak_mb=round(float(sepaxml["peak_mb"]), 1),
            speedup=round(speedup, 1),
        )
    if args.payouts:
        result.update(payout_comparison(args.payouts))
        if args.payout_task:
            task = _child("payout_task", args.payouts)
            print(
                f"whole payout task: {task['seconds']:.2f} s, peak {task['peak_mb']:.1f} MB "
                f"(lock, recovery, checks, control listing, SQLite ledger, file)"
            )
            result.update(
                payout_task_s=round(float(task["seconds"]), 2),
                payout_task_peak_mb=round(float(task["peak_mb"]), 1),
            )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
