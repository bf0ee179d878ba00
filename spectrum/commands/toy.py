"""`spectrum toy train|measure|text`: train the embedded pair; measure its λ spectrum; write
held-out text of its task."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from spectrum.errors import UserError
from spectrum.eval.benchmarks import synthetic as task

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
        "the recipe before issue #16 (default: the recipe's range, which the cards name)",
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

    text = actions.add_parser(
        "text", help="held-out text of the synthetic task (for `spectrum analyze --loss-path`)"
    )
    text.add_argument(
        "--out",
        type=Path,
        required=True,
        help="file to write: .jsonl, prompt and reference solution apart (only the solution "
        "is scored); else whole transcripts separated by blank lines",
    )
    text.add_argument(
        "--model",
        type=Path,
        default=Path("assets/pair/direct"),
        help="model folder whose chat template frames each document (default the pair's direct)",
    )
    text.add_argument("--n", type=int, default=4, help="held-out problems per level")
    text.add_argument("--seed", type=int, default=1)
    text.add_argument("--force", action="store_true", help="overwrite an existing file")
    text.set_defaults(func=run_text)


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
    import torch

    from spectrum.toy.train import Recipe, train_pair

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
    from spectrum.toy import cards, measure
    from spectrum.toy.train import PAIR_MODELS

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


def heldout_text(n: int, seed: int, model: Path) -> list[dict[str, str]]:
    """Held-out problems as the chat transcripts the pair learns from: ``prompt``, the
    question through ``model``'s chat template; ``text``, a reference solution in the
    task's own styles (a direct answer and a concise worked trace, by turns) and the end
    of turn. Neither parent has seen these problems (the task's test split)."""
    from spectrum.generate.template import load_tokenizer

    tokenizer = load_tokenizer(model)
    documents = []
    for level in task.LEVELS:
        for i, problem in enumerate(task.make_problems(level, n, seed=seed)):
            prompt = tokenizer.apply_chat_template(
                problem.messages, tokenize=False, add_generation_prompt=True
            )
            answer = task.thinking_response(problem) if i % 2 else task.direct_response(problem)
            documents.append(dict(prompt=prompt, text=answer + tokenizer.eos_token))
    return documents


def run_text(args: argparse.Namespace) -> int:
    import json
    import os

    if args.n < 1:
        raise UserError(f"--n must be at least 1, not {args.n}")
    if args.out.is_dir():
        raise UserError(f"--out {args.out} is a folder; name a text file")
    if not args.out.parent.is_dir():
        raise UserError(f"cannot write {args.out}: folder {args.out.parent} does not exist")
    if args.out.exists() and not args.force:
        raise UserError(f"{args.out} already exists; pass --force to overwrite it")
    if not (args.model / "config.json").is_file():
        raise UserError(f"no model at {args.model} (config.json missing)")
    documents = heldout_text(args.n, args.seed, args.model)
    if args.out.suffix == ".jsonl":
        body = "".join(json.dumps(document, ensure_ascii=False) + "\n" for document in documents)
        how = "JSON lines, the solution scored after its prompt"
    else:
        body = "\n\n".join(d["prompt"] + d["text"] for d in documents) + "\n"
        how = "whole transcripts, blank-line separated"
    tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, args.out)  # a reader sees the old file or the whole new one
    print(f"{args.out}: {len(documents)} held-out documents ({how})")
    return 0
