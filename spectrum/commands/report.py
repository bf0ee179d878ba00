"""`spectrum report`: a self-contained HTML report of a results database."""

from __future__ import annotations

import argparse


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
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spectrum.eval.report import build_report

    print(f"wrote {build_report(args.db, args.out, force=args.force)}")
    return 0
