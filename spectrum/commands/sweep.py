"""`spectrum sweep`: evaluate merges over a λ grid into a DuckDB file, resumably."""

from __future__ import annotations

import argparse
import shlex
import sys

import yaml

from spectrum.errors import UserError
from spectrum.eval.sweep import SweepSpec, parse_lams, run_sweep


def _key_values(items: list[str], flag: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} {item!r}: expected KEY=VALUE")
        pairs.append((key, value))
    return pairs


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--direct", required=True, help="direct (instruct) model: folder or hub id")
    parser.add_argument("--thinking", required=True, help="thinking model: folder or hub id")
    parser.add_argument("--base", help="base model, for methods that need one")


def add_eval_args(parser: argparse.ArgumentParser) -> None:
    """Options shared by `sweep` and `search`: what to evaluate and how to decode."""
    parser.add_argument("--bench", default="synthetic", help="benchmarks, comma-separated")
    parser.add_argument("--k", type=int, default=1, help="samples per problem")
    parser.add_argument("--limit", type=int, help="problems per benchmark (per level: synthetic)")
    parser.add_argument("--levels", help="synthetic levels, e.g. 1,3,5 (default: all)")
    parser.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="BENCH=PATH",
        help="local JSONL/Parquet file for a benchmark (docs/SCHEMA.md); repeatable",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="METHOD.NAME=VALUE",
        help="a merge method parameter, e.g. ties.density=0.5; repeatable",
    )
    parser.add_argument("--layers", help='limit the merge to layers, e.g. "12-35"')
    parser.add_argument("--modules", help="limit the merge to modules: attn,mlp,embed,norm,lm_head")
    parser.add_argument("--seed", type=int, default=0, help="merge and sampling seed")
    parser.add_argument("--data-seed", type=int, default=0, help="problem / choice-shuffle seed")
    parser.add_argument("--temperature", type=float, help="override the per-model default")
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--max-new-tokens", type=int, default=32768)
    parser.add_argument("--greedy", action="store_true", help="greedy decoding (use --k 1)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--backend",
        choices=("transformers", "vllm"),
        default="transformers",
        help="generation backend of the live merger (vllm needs the vllm package)",
    )
    parser.add_argument("--db", required=True, help="DuckDB results file (created if missing)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--ray",
        metavar="local|auto|ADDRESS",
        help="generate on a Ray cluster: local (start one here), auto (the running one) or "
        "HOST:PORT; this process only plans and writes the DB",
    )
    parser.add_argument(
        "--workers", type=int, help="Ray workers (default: one per GPU, else one on CPU)"
    )
    parser.add_argument(
        "--gpus-per-worker", type=float, default=0.0, help="GPUs per Ray worker (default 1 on GPUs)"
    )


def pool_from_args(args: argparse.Namespace):
    """The Ray pool ``--ray`` asks for, or None; ray is imported only then."""
    if args.ray is None:
        if args.workers is not None or args.gpus_per_worker:
            raise UserError("--workers and --gpus-per-worker need --ray local|auto|ADDRESS")
        return None
    from spectrum.eval.distributed import RayPool

    return RayPool(args.ray, workers=args.workers, gpus_per_worker=args.gpus_per_worker)


def spec_from_args(args: argparse.Namespace, methods: tuple[str, ...], lams) -> SweepSpec:
    if args.k < 1 or args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        raise UserError("--k, --batch-size and --limit must be at least 1")
    params: dict[str, dict] = {}
    for key, value in _key_values(args.param, "--param"):
        method, dot, name = key.partition(".")
        if not dot:
            raise UserError(f"--param {key!r}: expected METHOD.NAME=VALUE")
        params.setdefault(method, {})[name] = yaml.safe_load(value)
    decoding = dict(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_new_tokens=args.max_new_tokens,
        do_sample=False if args.greedy else None,
    )
    try:
        levels = tuple(int(x) for x in args.levels.split(",")) if args.levels else None
    except ValueError:
        raise UserError(f"--levels {args.levels!r}: expected integers like 1,3,5") from None
    return SweepSpec(
        direct=args.direct,
        thinking=args.thinking,
        base=args.base,
        methods=methods,
        lams=lams,
        benchmarks=tuple(args.bench.split(",")),
        k=args.k,
        limit=args.limit,
        levels=levels,
        data=dict(_key_values(args.data, "--data")),
        params=params,
        layers=args.layers,
        modules=tuple(args.modules.split(",")) if args.modules else None,
        seed=args.seed,
        data_seed=args.data_seed,
        decoding={k: v for k, v in decoding.items() if v is not None},
        batch_size=args.batch_size,
        backend=args.backend,
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep", help="evaluate merges over a λ grid into DuckDB (resumable)"
    )
    add_model_args(parser)
    parser.add_argument("--methods", default="linear", help="merge methods, comma-separated")
    parser.add_argument("--lam", default="0:1:0.1", help="λ grid: start:stop:step or a list")
    add_eval_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    spec = spec_from_args(args, tuple(args.methods.split(",")), parse_lams(args.lam))
    command = shlex.join(["spectrum", *sys.argv[1:]])
    pool = pool_from_args(args)
    try:
        result = run_sweep(spec, args.db, progress=not args.no_progress, command=command, pool=pool)
    finally:
        if pool is not None:
            pool.close()
    print(f"{args.db}: {result.generated} samples generated, {result.skipped} already there")
    return 0
