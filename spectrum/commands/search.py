"""`spectrum search`: find the phase-change λ, or the best λ under a token budget, adaptively."""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from functools import partial

from spectrum.commands.sweep import (
    add_eval_args,
    add_model_args,
    limits_from_args,
    pool_from_args,
    spec_from_args,
)
from spectrum.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search", help="adaptive λ search: the phase change, or the best λ under a token budget"
    )
    add_model_args(parser)
    parser.add_argument("--method", default="linear", help="merge method")
    parser.add_argument("--target", choices=("phase", "budget"), required=True)
    parser.add_argument(
        "--metric",
        choices=("think", "accuracy"),
        default="think",
        help="phase: the metric whose rise marks the phase change (default Think#R)",
    )
    parser.add_argument("--max-tokens", type=float, help="budget: the Token#N limit")
    parser.add_argument("--range", default="0:1", help="λ range searched, LO:HI")
    parser.add_argument("--coarse", type=float, default=0.125, help="coarse grid step")
    add_eval_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spectrum.eval.benchmarks import get_benchmark
    from spectrum.eval.sweep import check_spec, default_provider

    if args.target == "budget" and args.max_tokens is None:
        raise UserError("--target budget needs --max-tokens N")
    if args.max_tokens is not None and not 0 < args.max_tokens < math.inf:
        raise UserError(f"--max-tokens must be a positive number of tokens, not {args.max_tokens}")
    try:
        lo, hi = (float(x) for x in args.range.split(":"))
    except ValueError:
        raise UserError(f"--range {args.range!r}: expected LO:HI, e.g. 0:1") from None
    if not 0 <= lo < hi <= 1 or not 0 < args.coarse <= hi - lo:
        raise UserError("--range must satisfy 0 <= LO < HI <= 1 and --coarse fit inside it")
    limits = limits_from_args(args)
    coarse_points = (hi - lo) / args.coarse + 1
    if coarse_points > limits.grid:
        raise UserError(
            f"--coarse {args.coarse:g} makes a grid of {coarse_points:,.0f} λs over "
            f"[{lo:g}, {hi:g}], above the limit grid={limits.grid:,}",
            cli_hint="raise it with --limits grid=N",
        )
    spec = spec_from_args(args, (args.method,), (lo,))
    judged = [b for b in spec.benchmarks if get_benchmark(b).grader == "judge"]
    if judged:  # the search follows accuracy, which a judged benchmark does not have
        raise UserError(f"search needs an accuracy; {', '.join(judged)} is scored by a judge")
    check_spec(spec, limits)
    provider = {}

    def shared_provider(spec):  # one loaded model for every benchmark
        if "model" not in provider:
            provider["model"] = default_provider(spec)
        return provider["model"]

    pool = pool_from_args(args)  # one pool of workers for every benchmark and round
    try:
        for bench in spec.benchmarks:
            print(describe(bench, args, _search(args, spec, bench, shared_provider, pool, lo, hi)))
    finally:
        if pool is not None:
            pool.close()
    return 0


def _search(args, spec, bench: str, provider_factory, pool, lo: float, hi: float):
    from spectrum.eval.search import find_budget, find_phase
    from spectrum.eval.sweep import Sweeper

    sweeper = Sweeper(
        replace(spec, benchmarks=(bench,)),
        args.db,
        provider_factory=provider_factory,
        progress=not args.no_progress,
        pool=pool,
        limits=limits_from_args(args),
    )
    evaluate = partial(sweeper.point, args.method, benchmark=bench)

    def prefetch(lams: list[float]) -> None:  # a round's probes at once: in parallel on a pool
        sweeper.run(methods=(args.method,), lams=tuple(lams))

    try:
        if args.target == "phase":
            return find_phase(
                evaluate, metric=args.metric, lo=lo, hi=hi, coarse=args.coarse, prefetch=prefetch
            )
        return find_budget(
            evaluate, args.max_tokens, lo=lo, hi=hi, coarse=args.coarse, prefetch=prefetch
        )
    finally:
        sweeper.close()


def describe(bench: str, args: argparse.Namespace, found) -> str:
    cost = (
        f"{found.evaluations} evaluations vs {found.grid_evaluations} on a 0.01 grid "
        f"({found.evaluations / found.grid_evaluations:.0%})"
    )
    if found.lam is None:
        return f"{bench}: {found.note} ({cost})"
    point = found.evaluated.get(round(found.lam, 6))
    if args.target == "phase":
        a, b = found.bracket
        return (
            f"{bench}: phase change of {args.metric} at λ≈{found.lam:.3f} "
            f"(in [{a:g}, {b:g}]); {cost}"
        )
    return (
        f"{bench}: best λ under {args.max_tokens:g} tokens: {found.lam:g} "
        f"(accuracy {point.accuracy:.3f}, {point.tokens:.1f} tokens); {cost}"
    )
