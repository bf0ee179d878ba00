"""`spectrum bench export synthetic`: write the toy task's held-out problems as JSONL."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from spectrum.errors import UserError
from spectrum.eval.benchmarks import synthetic as task


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="benchmark data sets")
    actions = parser.add_subparsers(dest="action", required=True)
    export = actions.add_parser("export", help="write a benchmark's problems as JSONL")
    export.add_argument("benchmark", choices=["synthetic"], help="the benchmark to export")
    export.add_argument("--level", type=int, required=True, help=f"one of {task.LEVELS}")
    export.add_argument("--n", type=int, default=200, help="number of problems (default 200)")
    export.add_argument("--seed", type=int, default=0, help="problem seed (default 0)")
    export.add_argument("--split", choices=task.SPLITS, default="test", help="default: test")
    export.add_argument("--out", type=Path, required=True, help="the JSONL file to write")
    export.add_argument("--force", action="store_true", help="overwrite an existing file")
    export.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.force:
        raise UserError(f"{args.out} already exists; pass --force to overwrite it")
    if not args.out.parent.is_dir():
        raise UserError(f"folder {args.out.parent} does not exist")
    problems = task.make_problems(args.level, args.n, args.seed, split=args.split)
    temp = args.out.with_name(f".{args.out.name}.tmp")
    with temp.open("w") as file:
        for problem in problems:
            record = {
                "id": problem.id,
                "level": problem.level,
                "question": problem.question,
                "messages": problem.messages,
                "answer": problem.answer,
            }
            file.write(json.dumps(record, allow_nan=False) + "\n")
    os.replace(temp, args.out)
    print(f"wrote {len(problems)} level-{args.level} {args.split} problems to {args.out}")
    return 0
