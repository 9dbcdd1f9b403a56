"""Command line of the demo ERP: ``python -m connectors.erp seed --url sqlite:///var/demo/erp.sqlite``.

Why: the demo profile, the benchmarks and a developer's first run need a filled ERP without writing
Python. ``seed`` fills the reference schema with deterministic German demo data, ``mutate`` changes
a share of the persons (the "1 % changed" delta).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from datetime import date

from connectors.erp.database import make_engine
from connectors.erp.demo import DEFAULT_BUSINESS_DATE, generate_erp, mutate_erp


def _parser() -> argparse.ArgumentParser:
    """Build the argument parser with the ``seed`` and ``mutate`` commands."""
    parser = argparse.ArgumentParser(prog="python -m connectors.erp", description="Demo ERP database tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    seed = sub.add_parser("seed", help="fill the ERP tables with deterministic demo data")
    seed.add_argument("--url", default="sqlite:///var/demo/erp.sqlite", help="SQLAlchemy database URL")
    seed.add_argument("--persons", type=int, default=1000, help="size knob (persons; the rest scales)")
    seed.add_argument("--seed", type=int, default=42, help="random seed (same seed -> same rows)")
    seed.add_argument("--business-date", type=date.fromisoformat, default=DEFAULT_BUSINESS_DATE)
    seed.add_argument("--group", default="CASAVI", help="object group released for the portal")
    seed.add_argument("--reset", action="store_true", help="drop and recreate the ERP tables first")
    seed.add_argument("--edge-cases", action="store_true", help="print the edge-case numbers as JSON")
    mutate = sub.add_parser("mutate", help="change a share of the persons (phone, e-mail, city)")
    mutate.add_argument("--url", default="sqlite:///var/demo/erp.sqlite", help="SQLAlchemy database URL")
    mutate.add_argument("--seed", type=int, default=1, help="random seed of the change set")
    mutate.add_argument("--fraction", type=float, default=0.01, help="share of persons to change")
    mutate.add_argument("--business-date", type=date.fromisoformat, default=DEFAULT_BUSINESS_DATE)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code (2 on a refused seed, e.g. data present)."""
    args = _parser().parse_args(argv)
    engine = make_engine(args.url)
    try:
        if args.command == "seed":
            started = time.perf_counter()
            try:
                summary = generate_erp(
                    engine,
                    persons=args.persons,
                    seed=args.seed,
                    business_date=args.business_date,
                    group=args.group,
                    reset=args.reset,
                )
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            elapsed = time.perf_counter() - started
            print(
                f"seeded {args.url} in {elapsed:.1f} s (seed {args.seed}, business date {args.business_date})"
            )
            for table, count in summary.counts.items():
                print(f"  {table:<24}{count:>10}")
            if args.edge_cases:
                print(json.dumps(summary.edge_cases, indent=1))
            else:
                print("edge cases: " + ", ".join(f"{k}={len(v)}" for k, v in summary.edge_cases.items()))
        else:
            changed = mutate_erp(
                engine, seed=args.seed, fraction=args.fraction, business_date=args.business_date
            )
            print(f"changed {len(changed)} persons in {args.url}")
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
