"""`spectrum toy train|measure`: train the embedded pair; measure its λ spectrum."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from spectrum.errors import UserError
from spectrum.eval.benchmarks import synthetic as task
from spectrum.toy import cards, measure
from spectrum.toy.train import PAIR_MODELS, Recipe, train_pair

DEFAULT_LAMS = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("toy", help="the embedded toy model pair")
    actions = parser.add_subparsers(dest="action", required=True)

    train = actions.add_parser("train", help="train base, direct and thinking from scratch")
    train.add_argument("--out", type=Path, required=True, help="folder for the pair")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--tiny", action="store_true", help="a few steps of a tiny model (CI)")
    train.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda")
    train.add_argument("--force", action="store_true", help="replace an existing pair")
    train.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    train.add_argument(
        "--base-max-checks",
        type=int,
        choices=(0, 1, 2),
        default=2,
        help="most re-checks in the base's traces (default 2; 0: the base never re-checks)",
    )
    train.add_argument(
        "--thinking-checks",
        type=parse_checks,
        help="re-checks in the thinking stage's traces: N, or MIN-MAX drawn per batch; 2 is "
        "the recipe before issue #16 "
        f"(default {cards.checks_label(Recipe().verbose_checks)})",
    )
    train.set_defaults(func=run_train)

    sweep = actions.add_parser("measure", help="sweep linear merges over λ on held-out problems")
    sweep.add_argument("--pair", type=Path, default=Path("assets/pair"))
    sweep.add_argument("--thinking", default="thinking", help="thinking child folder name")
    sweep.add_argument("--lams", default=DEFAULT_LAMS, help="comma-separated λ values")
    sweep.add_argument("--n", type=int, default=200, help="problems per level")
    sweep.add_argument("--seed", type=int, default=0)
    sweep.add_argument("--levels", default=",".join(map(str, task.LEVELS)))
    sweep.add_argument("--json", type=Path, help="also write the rows as JSON here")
    sweep.add_argument("--write-cards", action="store_true", help="put the table in the cards")
    sweep.set_defaults(func=run_measure)


def parse_floats(text: str, what: str) -> list[float]:
    try:
        return [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise UserError(f"{what} must be comma-separated numbers, got {text!r}") from None


def parse_checks(text: str) -> tuple[int, int]:
    """``2`` → (2, 2); ``0-3`` → (0, 3)."""
    try:
        low, _, high = text.partition("-")
        checks = (int(low), int(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN-MAX, got {text!r}") from None
    # Four re-checks of a level-5 trace is 124 tokens: more would not fit the 256 positions
    # beside the prompt with room to spare.
    if not 0 <= checks[0] <= checks[1] <= 4:
        raise argparse.ArgumentTypeError(f"re-checks must satisfy 0 <= MIN <= MAX <= 4: {text!r}")
    return checks


def run_train(args: argparse.Namespace) -> int:
    recipe = replace(Recipe.tiny() if args.tiny else Recipe(), base_max_checks=args.base_max_checks)
    if args.thinking_checks:
        recipe = replace(recipe, verbose_checks=args.thinking_checks)
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = train_pair(args.out, recipe, seed=args.seed, device=args.device, force=args.force)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def run_measure(args: argparse.Namespace) -> int:
    lams = parse_floats(args.lams, "--lams")
    levels = [int(level) for level in parse_floats(args.levels, "--levels")]
    for level in levels:
        task.check_level(level)
    if any(not 0.0 <= lam <= 1.0 for lam in lams):
        raise UserError(f"λ values must lie in [0, 1], got {args.lams}")
    direct, thinking = args.pair / "direct", args.pair / args.thinking
    for path in (direct, thinking):
        if not (path / "config.json").is_file():
            raise UserError(f"no model at {path} (config.json missing)")
    rows = measure.sweep(direct, thinking, lams, n=args.n, seed=args.seed, levels=levels)
    table = cards.markdown_table(rows) + "\n\n" + cards.summary(rows)
    print(table)
    if args.json:
        cards.write_rows(rows, args.json)
    if args.write_cards:
        command = cards.measure_command(args)
        for name in PAIR_MODELS:
            if (args.pair / name).is_dir():
                cards.insert_table(args.pair / name / "README.md", table, command, args.thinking)
    return 0
