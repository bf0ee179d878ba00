"""`spectrum sweep`: evaluate merges over a λ grid into a DuckDB file, resumably."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import TYPE_CHECKING

from spectrum.errors import UserError

if TYPE_CHECKING:
    from spectrum.eval.sweep import SweepLimits, SweepSpec

# spectrum.eval.sweep.SweepLimits() as text: written out here so --help imports no torch
# (tests/test_inputs_hostile.py checks the two agree).
SWEEP_LIMITS = "grid=1001, k=1000, problems=100000, new_tokens=131072, work=100000000000"


def limits_from_args(args: argparse.Namespace) -> SweepLimits:
    from spectrum.eval.sweep import SweepLimits

    return SweepLimits.parse(args.limits)


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
    parser.add_argument(
        "--allow-pickle", action="store_true", help="read pickle weight files (can run code)"
    )


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
        help="local file for a benchmark: JSONL/Parquet, or creative_writing's prompts "
        "JSON in EQ-Bench Creative Writing v3's layout (docs/SCHEMA.md); repeatable",
    )
    parser.add_argument(
        "--judge",
        metavar="URL,MODEL",
        help="judge for creative_writing: an OpenAI-compatible endpoint (a vLLM server, "
        "`spectrum serve`) and its model name; key from $SPECTRUM_JUDGE_API_KEY",
    )
    parser.add_argument(
        "--judge-max-tokens",
        type=int,
        default=1000,
        help="most tokens of a judge reply (default 1000)",
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
    parser.add_argument(
        "--template",
        choices=("direct", "thinking"),
        default="thinking",
        help="whose chat template merged models run with (default: the thinking parent's, "
        "which an exported merge carries); λ=0 always runs with the direct parent's",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--backend",
        choices=("transformers", "vllm"),
        default="transformers",
        help="generation backend of the live merger (vllm: in the vLLM venv ./run.sh test builds)",
    )
    parser.add_argument("--db", required=True, help="DuckDB results file (created if missing)")
    parser.add_argument(
        "--limits",
        default="",
        metavar="KEY=N,...",
        help="raise or lower the caps on one run's work, refused before any work: grid "
        "(configurations), k, problems (per benchmark), new_tokens (max new tokens), work "
        f"(answers × max new tokens); defaults: {SWEEP_LIMITS}",
    )
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


def add_baseline_args(parser: argparse.ArgumentParser) -> None:
    """Baselines that make the thinking model cheaper without a merge (`sweep` only)."""
    parser.add_argument(
        "--budgets",
        help="baseline: budget forcing of the thinking model at these thinking budgets "
        "(tokens), e.g. 16,32,64",
    )
    parser.add_argument(
        "--no-thinking",
        action="store_true",
        help="baseline: the thinking model with an empty thinking block (NoThinking)",
    )
    parser.add_argument(
        "--baseline-lam",
        default="1",
        help="λ of the linear merges the baselines run on (default 1: the thinking parent)",
    )
    parser.add_argument(
        "--think-end",
        help="text that closes thinking at the budget (default: the pair's own delimiter, "
        "</think>, on its own line)",
    )
    parser.add_argument(
        "--budget-waits",
        type=int,
        default=0,
        help="budget forcing (s1): the first N times the model ends its thinking inside "
        'the budget, append "Wait" instead so it thinks on (default 0)',
    )
    parser.add_argument(
        "--answer-cue",
        default="Final Answer:",
        help="budget forcing (s1): text after the closed thinking block at the budget "
        '(default "Final Answer:"; "" for none)',
    )


def spec_from_args(
    args: argparse.Namespace,
    methods: tuple[str, ...],
    lams,
    module_lams: dict[str, tuple[float, ...]] | None = None,
) -> SweepSpec:
    import yaml

    from spectrum.eval.sweep import SweepSpec

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
        allow_pickle=args.allow_pickle,
        module_lams=module_lams or {},
        template=args.template,
        judge=args.judge,
        judge_max_tokens=args.judge_max_tokens,
        **(baseline_args(args) if hasattr(args, "budgets") else {}),
        checkpoints=checkpoint_args(args.checkpoint) if hasattr(args, "checkpoint") else {},
    )


def checkpoint_args(items: list[str]) -> dict[str, str]:
    """``--checkpoint NAME=PATH`` items as {name: path}; a name given twice is refused."""
    found: dict[str, str] = {}
    for name, path in _key_values(items, "--checkpoint"):
        if name in found:
            raise UserError(f"--checkpoint names {name!r} twice; give each checkpoint one name")
        found[name] = path
    return found


def baseline_args(args: argparse.Namespace) -> dict:
    """The baseline fields of a SweepSpec from the flags (none given: no baselines)."""
    from spectrum.eval.sweep import parse_lams

    try:
        budgets = tuple(int(b) for b in args.budgets.split(",")) if args.budgets else ()
    except ValueError:
        raise UserError(
            f"--budgets {args.budgets!r}: expected token counts like 16,32,64"
        ) from None
    found = dict(budgets=budgets, no_thinking=args.no_thinking)
    found["baseline_lams"] = parse_lams(args.baseline_lam)
    if args.think_end is not None:
        found["think_end"] = args.think_end
    if args.budget_waits < 0:
        raise UserError(f"--budget-waits must be at least 0, not {args.budget_waits}")
    if args.budget_waits and not budgets:
        raise UserError("--budget-waits extends budget forcing: give --budgets too")
    found.update(think_waits=args.budget_waits, answer_cue=args.answer_cue)
    return found


def split_lam_grid(text: str, most: int) -> tuple[str, dict[str, tuple[float, ...]]]:
    """``0:1:0.5,attn=0:1:0.25,mlp=0|0.5`` → the plain λ grid and each module kind's grid
    (a kind's values: start:stop:step, or a list separated by ``|``; at most ``most``)."""
    from spectrum.eval.sweep import parse_lams

    items = text.split(",")
    plain = ",".join(item for item in items if "=" not in item) or "0.5"
    grids: dict[str, tuple[float, ...]] = {}
    for item in (item for item in items if "=" in item):
        kind, _, grid = item.partition("=")
        if kind.strip() in grids:
            raise UserError(f"λ grid {text!r} names module kind {kind.strip()!r} twice")
        grids[kind.strip()] = parse_lams(grid.replace("|", ","), most)
    return plain, grids


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep", help="evaluate merges over a λ grid into DuckDB (resumable)"
    )
    add_model_args(parser)
    parser.add_argument("--methods", default="linear", help="merge methods, comma-separated")
    parser.add_argument(
        "--lam",
        default="0:1:0.1",
        help="λ grid: start:stop:step or a list; KIND=GRID items sweep a module kind's own λ, "
        "e.g. 0.5,attn=0:1:0.25,mlp=0|0.5|1 (the product of the grids is run)",
    )
    add_eval_args(parser)
    add_baseline_args(parser)
    parser.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="another model on the same test as the merges, e.g. an intermediate checkpoint "
        "of the thinking model's training: run as itself (its own chat template, the thinking "
        "model's decoding defaults), stored as method checkpoint under NAME; repeatable",
    )
    parser.add_argument(
        "--batch-lams",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="affine methods (transformers backend): decode every λ in one batch on one "
        "spectrum model (a batch: --batch-size problems × every λ) instead of re-merging "
        "per λ (default on; a grid of 0 and 1 alone runs per λ, where that is faster)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spectrum.eval.sweep import check_pool, check_spec, parse_lams, run_sweep

    limits = limits_from_args(args)
    plain, module_lams = split_lam_grid(args.lam, limits.grid)
    lams = parse_lams(plain, limits.grid)
    spec = spec_from_args(args, tuple(args.methods.split(",")), lams, module_lams)
    check_spec(spec, limits)  # before a Ray pool starts
    check_pool(spec, args.ray is not None)
    command = shlex.join(["spectrum", *sys.argv[1:]])
    pool = pool_from_args(args)
    try:
        result = run_sweep(
            spec,
            args.db,
            progress=not args.no_progress,
            command=command,
            batch_lams=args.batch_lams,
            pool=pool,
            limits=limits,
        )
    finally:
        if pool is not None:
            pool.close()
    print(f"{args.db}: {result.generated} samples generated, {result.skipped} already there")
    return 0
