"""`spectrum report`: a self-contained HTML report of a results database, or its
statements as JSON."""

from __future__ import annotations

import argparse
import json

# spectrum.eval.metrics.INTERVALS, named here so `--help` never imports numpy and scipy
# (tests/test_science_truth.py checks the two agree).
INTERVALS = ("auto", "t_runs")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help="write an HTML report of a results DB")
    parser.add_argument("--db", required=True, help="DuckDB results file")
    parser.add_argument(
        "--out",
        default="report.html",
        help="HTML file to write, in an existing folder; replaces only an earlier report",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing file that is not a report (never a DB, model or assets/)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print every statement (numbers, interval method, verdict, confirmed) as JSON "
        "instead of writing HTML",
    )
    parser.add_argument(
        "--margin",
        type=float,
        default=0.0,
        help="accuracy an improvement may lose: its paired accuracy difference's lower bound "
        "must be at least -MARGIN (default 0)",
    )
    parser.add_argument(
        "--interval",
        choices=INTERVALS,
        default="auto",
        help="auto: Wilson at k=1, bootstrap over problems otherwise; t_runs: Student-t over "
        "the k sampling runs (ThinkingSpectrum)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spectrum.eval.report import build_report, report_statements

    if args.json:
        found = report_statements(args.db, margin=args.margin, interval=args.interval)
        print(json.dumps(found, indent=1, ensure_ascii=False, allow_nan=False))
        return 0
    out = build_report(
        args.db, args.out, force=args.force, margin=args.margin, interval=args.interval
    )
    print(f"wrote {out}")
    return 0
