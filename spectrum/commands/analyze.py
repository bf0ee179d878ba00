"""`spectrum analyze`: how far apart the two parents are, where, and how dense Δ is."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("analyze", help="weight analysis of a direct/thinking pair")
    parser.add_argument("--direct", required=True, help="direct (instruct) model: folder or hub id")
    parser.add_argument("--thinking", required=True, help="thinking model: folder or hub id")
    parser.add_argument("--db", help="DuckDB file to store the analysis in (for report and app)")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
