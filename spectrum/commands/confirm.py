"""`spectrum confirm`: re-evaluate a configuration picked from a sweep on fresh held-out
problems, with the parents on the same problems, and store the confirmation."""

from __future__ import annotations

import argparse
import sys

from spectrum.commands.report import INTERVALS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "confirm", help="re-evaluate a configuration from a sweep on fresh problems"
    )
    parser.add_argument("--db", required=True, help="the sweep's DuckDB results file")
    parser.add_argument("--config", required=True, help="METHOD@λ, e.g. linear@0.85")
    parser.add_argument(
        "--data-seed", type=int, help="seed of the fresh problems (default: the sweep's + 1)"
    )
    parser.add_argument("--limit", type=int, help="problems per benchmark (level)")
    parser.add_argument("--k", type=int, help="samples per problem (default: the sweep's)")
    parser.add_argument(
        "--batch-size",
        type=int,
        help="units per cell (default: the sweep's); keep it when resuming, as in a sweep",
    )
    parser.add_argument(
        "--sample",
        action="store_true",
        help="sample (per-model temperature/top-p) even if the sweep decoded greedily",
    )
    parser.add_argument("--margin", type=float, default=0.0, help="as in `spectrum report`")
    parser.add_argument("--interval", choices=INTERVALS, default="auto")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spectrum.eval.confirm import confirm
    from spectrum.eval.report import confirmation_statements

    found = confirm(
        args.db, args.config, data_seed=args.data_seed, limit=args.limit, k=args.k,
        batch_size=args.batch_size, margin=args.margin, interval=args.interval, sample=args.sample,
        progress=not args.no_progress, command=" ".join(["spectrum", *sys.argv[1:]]),
    )  # fmt: skip
    for statement in confirmation_statements(found):
        print(statement["text"])
    return 0
