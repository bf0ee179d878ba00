"""`spectrum analyze`: how far apart the two parents are, where, and how dense Δ is; with
``--loss-path``, the NLL along the linear path between them instead."""

from __future__ import annotations

import argparse

from spectrum.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("analyze", help="weight analysis of a direct/thinking pair")
    parser.add_argument("--direct", required=True, help="direct (instruct) model: folder or hub id")
    parser.add_argument("--thinking", required=True, help="thinking model: folder or hub id")
    parser.add_argument("--db", help="DuckDB file to store the analysis in (for report and app)")
    parser.add_argument(
        "--loss-path",
        action="store_true",
        help="instead of the weight analysis: mean per-token NLL of --text and of each "
        "parent's own answers at every λ of --lam (all λ in one batch)",
    )
    parser.add_argument(
        "--text",
        help="held-out text for --loss-path: UTF-8, documents separated by blank lines; or "
        '.jsonl: {"prompt": ..., "text": ...} per line, only the text scored',
    )
    parser.add_argument("--lam", default="0:1:0.1", help="λ grid of --loss-path (default 0:1:0.1)")
    parser.add_argument(
        "--problems",
        type=int,
        default=2,
        help="--loss-path: held-out synthetic problems per level each parent answers (default 2)",
    )
    parser.add_argument("--data-seed", type=int, default=0, help="--loss-path: problems' seed")
    parser.add_argument(
        "--max-new-tokens", type=int, default=160, help="--loss-path: longest parent answer"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="--loss-path: sequences per forward, each at every λ (rows = sequences × λs, "
        "each with its logits: lower it for a large model)",
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.loss_path:
        return run_loss_path(args)
    if args.text is not None:
        raise UserError("--text is the held-out text of --loss-path; add --loss-path")
    from spectrum.eval import store
    from spectrum.eval.analysis import analyze, store_analysis

    result = analyze(args.direct, args.thinking, progress=not args.no_progress)
    stats = result.stats
    overall = stats[stats["scope"] == "overall"].iloc[0]
    print(f"relative distance ‖Δ‖/‖θ_D‖: {100 * overall['rel_distance']:.4f} %")
    for scope in ("module", "layer"):
        for _, row in stats[stats["scope"] == scope].iterrows():
            print(f"  {scope} {row['key']}: {100 * row['rel_distance']:.4f} %")
    energy = result.energy
    half = energy[energy["share"] >= 0.5].iloc[0]
    print(
        f"half of Σ Δ² sits in the top {100 * half['fraction']:.1f} % of positions "
        f"(a Gaussian Δ: {100 * energy[energy['reference'] >= 0.5].iloc[0]['fraction']:.1f} %)"
    )
    if args.db:
        con = store.connect(args.db)
        try:
            store_analysis(con, result, args.direct, args.thinking)
        finally:
            con.close()
        print(f"stored in {args.db} (analysis {result.analysis_id})")
    return 0


def run_loss_path(args: argparse.Namespace) -> int:
    if args.text is None:
        raise UserError("--loss-path needs --text FILE (documents separated by blank lines)")
    from spectrum.eval import store
    from spectrum.eval.loss_path import (
        SOURCES,
        check_inputs,
        loss_path,
        ridge_sentence,
        ridges,
        store_loss_path,
    )
    from spectrum.eval.sweep import parse_lams

    lams = parse_lams(args.lam)
    check_inputs(  # bad input is refused before the model loads or the DB is touched
        args.direct, args.text, lams, problems_per_level=args.problems,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
    )  # fmt: skip
    if args.db:
        store.connect(args.db).close()  # likewise a DB that cannot be written
    result = loss_path(
        args.direct, args.thinking, args.text, lams, problems_per_level=args.problems,
        data_seed=args.data_seed, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, progress=not args.no_progress,
    )  # fmt: skip
    frame = result.frame
    table = frame.pivot(index="lam", columns="source", values="nll")
    table = table[[source for source in SOURCES if source in table.columns]]
    tokens = frame.groupby("source")["n_tokens"].first()
    print("mean per-token NLL (nats) along θ(λ) = (1−λ)·θ_direct + λ·θ_thinking")
    print("     λ  " + "".join(f"{source:>18}" for source in table.columns))
    for lam, row in table.iterrows():
        print(f"{lam:6g}  " + "".join(f"{value:18.4f}" for value in row))
    print("tokens  " + "".join(f"{int(tokens[source]):18d}" for source in table.columns))
    for _, row in ridges(frame).iterrows():
        print(ridge_sentence(row))
    if args.db:
        con = store.connect(args.db)
        try:
            store_loss_path(con, result)
        finally:
            con.close()
        print(f"stored in {args.db} (loss path {result.path_id})")
    return 0
