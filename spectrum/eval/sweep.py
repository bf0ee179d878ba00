"""Resumable λ sweeps: every (configuration, problem, sample) generated, graded and stored once.

The merged models come from a *provider* with the live merger's surface
(``set(spec)``, ``holding(spec)``, ``.model``, ``.tokenizer``, ``session()``): no
checkpoint is written per λ. The unit of work is one sample; the
missing units are grouped into *cells* (one configuration, one benchmark, up to
``batch_size`` units) and each cell is committed to DuckDB in one transaction, so a sweep
killed at any moment and run again skips what was committed and redoes only the cells in
flight. A cell's sampling seed comes from the sweep seed, its configuration and its first
unit, never from where or when it ran, so a sweep on a Ray pool (``distributed.py``) and
a resumed sweep store the rows a single uninterrupted process would.
The DB is open only for those transactions (``store.opened``), so the dashboard reads it
and records votes while a sweep runs; one sweep per DB at a time (``store.sweep_lock``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from functools import lru_cache
from importlib import metadata
from itertools import product
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from spectrum.errors import UserError
from spectrum.eval import results, store
from spectrum.eval.benchmarks import Problem, get_benchmark, load_problems
from spectrum.eval.creative import JUDGE_MAX_TOKENS, Judge, judged_columns
from spectrum.eval.grading import grade, strip_thinking
from spectrum.eval.search import Point
from spectrum.eval.style_bleed import style_bleed
from spectrum.generate.batch import (
    ANSWER_CUE,
    INT_COLUMN_MAX,
    DecodingSettings,
    Generation,
    generator_for,
)
from spectrum.merge.spec import MergeSpec, check_lam
from spectrum.weights.planner import check_live

log = logging.getLogger(__name__)

PACKAGES = ("thinking-spectrum", "torch", "transformers", "math-verify", "duckdb", "vllm")


@dataclass(frozen=True)
class SweepSpec:
    direct: str
    thinking: str
    base: str | None = None
    methods: tuple[str, ...] = ("linear",)
    lams: tuple[float, ...] = (0.0, 0.5, 1.0)
    benchmarks: tuple[str, ...] = ("synthetic",)
    k: int = 1
    limit: int | None = None
    levels: tuple[int, ...] | None = None
    data: dict[str, str] = field(default_factory=dict)  # benchmark → local file
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # method → params
    layers: str | None = None
    modules: tuple[str, ...] | None = None
    seed: int = 0  # merge seed (DARE masks) and the base of sampling seeds
    data_seed: int = 0  # problem generation and GPQA choice shuffles
    decoding: dict[str, Any] = field(default_factory=dict)  # overrides of the per-λ defaults
    batch_size: int = 16
    backend: str = "transformers"  # or "vllm"
    allow_pickle: bool = False  # read pickle weight files (refused by name otherwise)
    # λ per module kind: each kind's grid; the sweep runs their product at every λ.
    module_lams: dict[str, tuple[float, ...]] = field(default_factory=dict)
    # Baselines without a merge (docs/SCHEMA.md): budget forcing at each thinking budget
    # and NoThinking, on the linear merges at ``baseline_lams`` (1.0: the thinking parent).
    budgets: tuple[int, ...] = ()
    no_thinking: bool = False
    baseline_lams: tuple[float, ...] = (1.0,)
    think_end: str | None = None  # None: the pair's own end-of-thinking delimiter
    think_waits: int = 0  # budget forcing: "Wait" instead of the delimiter this many times
    answer_cue: str = ANSWER_CUE
    # Whose chat template merged models (0 < λ ≤ 1) run with: the thinking parent's, as an
    # exported merge carries it (``copy_from``), or the direct parent's. λ = 0 is the
    # direct parent and always runs with its own.
    template: str = "thinking"
    # Judged benchmarks (creative_writing): "URL,MODEL" of an OpenAI-compatible endpoint
    # and the most tokens its reply may take. Not part of a configuration's id: the judge
    # scores rows, it does not change what the model wrote.
    judge: str | None = None
    judge_max_tokens: int = JUDGE_MAX_TOKENS
    # Other models on the same test as the merges (docs/SCHEMA.md, checkpoint rows): name →
    # folder, e.g. an intermediate checkpoint of the thinking parent's training. Each runs
    # as itself, with its own chat template and the thinking parent's decoding defaults.
    checkpoints: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepResult:
    run_id: str
    generated: int
    skipped: int
    stopped: bool = False  # the stop event ended it early; a later run resumes


@dataclass(frozen=True)
class SweepProgress:
    """Where a running sweep is: reported as each configuration starts and after every
    stored batch."""

    done: int  # samples generated and stored by this run so far
    total: int  # samples this run has to generate
    method: str
    lam: float
    benchmark: str
    elapsed_s: float

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate so far; None before the first batch is stored."""
        if self.done == 0:
            return None
        return self.elapsed_s * (self.total - self.done) / self.done


@dataclass(frozen=True)
class SweepLimits:
    """The most work one sweep may ask for; a sweep past any of them is refused before any
    work, with the numbers. The CLI's defaults (``--limits``) fit a full study; the page
    uses smaller ones (``spectrum app --sweep-limits``)."""

    grid: int = 1001  # configurations: methods × λs × module λs, plus baselines
    k: int = 1000  # samples per problem
    problems: int = 100_000  # problems per benchmark
    new_tokens: int = 131_072  # max new tokens per answer
    work: int = 10**11  # units (configurations × problems × k) × max new tokens

    @classmethod
    def parse(cls, text: str, default: SweepLimits | None = None) -> SweepLimits:
        """``grid=41,k=8`` over ``default`` (the keys not named keep its values)."""
        found = asdict(default or cls())
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, _, value = item.partition("=")
            if key.strip() not in found:
                raise UserError(f"limit {item!r}: the limits are {', '.join(found)} (KEY=N)")
            try:
                number = int(float(value))
            except (ValueError, OverflowError):
                raise UserError(f"limit {item!r}: {value!r} is not a whole number") from None
            found[key.strip()] = number
        return cls(**found)

    def __post_init__(self) -> None:
        for key, value in asdict(self).items():
            if value < 1:
                raise UserError(f"limit {key}={value} must be at least 1")
        if self.new_tokens > INT_COLUMN_MAX or self.k > INT_COLUMN_MAX:
            raise UserError(
                f"limits new_tokens and k are stored as integers up to {INT_COLUMN_MAX}"
            )

    def describe(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in asdict(self).items())

    def check(self, what: str, asked: int, key: str) -> None:
        """Refuse ``asked`` above the limit ``key``, naming both numbers."""
        limit = getattr(self, key)
        if asked > limit:
            raise UserError(
                f"{what} is {asked:,}, above the limit {key}={limit:,}",
                cli_hint=f"raise it with --limits {key}=N",
            )


def parse_lams(text: str, most: int = SweepLimits.grid) -> tuple[float, ...]:
    """``0:1:0.1`` (start:stop:step, stop included) or ``0,0.5,1``; at most ``most`` values
    (counted before any is made: ``0:1:1e-300`` is refused, not materialized)."""
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if not all(map(math.isfinite, (start, stop, step))) or step <= 0 or stop < start:
                raise ValueError
            count = (stop - start) / step
            if not count < most:  # also catches an infinite count
                raise UserError(
                    f"λ grid {text!r} has {count + 1:.3g} values; the limit is {most:,}"
                )
            values = [start + i * step for i in range(int(round(count)) + 1)]
        else:
            values = [float(x) for x in text.split(",")]
    except ValueError:
        raise UserError(
            f"λ grid {text!r}: write start:stop:step with finite numbers (e.g. 0:1:0.1) "
            "or a list (0,0.5,1)"
        ) from None
    if len(values) > most:
        raise UserError(f"λ grid {text!r} has {len(values):,} values; the limit is {most:,}")
    return tuple(check_lam(round(v, 6)) for v in values)


def configuration_count(spec: SweepSpec) -> int:
    """How many configurations ``spec`` runs (what ``_configurations`` would make)."""
    module_grids = math.prod(len(grid) for grid in spec.module_lams.values())
    baselines = len(spec.budgets) + int(spec.no_thinking)
    merges = len(spec.methods) * len(spec.lams) * module_grids
    return merges + len(spec.baseline_lams) * baselines + len(spec.checkpoints)


def check_spec(spec: SweepSpec, limits: SweepLimits) -> None:
    """Everything about ``spec``'s size and integers that needs no file: refused at once."""
    limits.check(
        "the grid (methods × λs × module λs + baselines + checkpoints)",
        configuration_count(spec),
        "grid",
    )
    check_checkpoint_names(spec)
    limits.check("samples per problem (k)", spec.k, "k")
    if spec.limit is not None:
        limits.check("problems per benchmark", spec.limit, "problems")
    limits.check("max new tokens", _max_new_tokens(spec), "new_tokens")
    for name in ("seed", "data_seed"):
        value = getattr(spec, name)
        if not 0 <= value <= INT_COLUMN_MAX:
            raise UserError(f"{name} must be between 0 and {INT_COLUMN_MAX}, not {value}")
    DecodingSettings.for_lam(0.5, **spec.decoding)  # temperature, top-p, top-k in range
    judge_of(spec)


def judge_of(spec: SweepSpec) -> Judge | None:
    """The judge the spec names (checked), where a benchmark needs one."""
    judged = [b for b in spec.benchmarks if get_benchmark(b).grader == "judge"]
    if not judged:
        return None
    if not spec.judge:
        raise UserError(
            f"{', '.join(judged)} is scored by a judge model",
            cli_hint="name one with --judge URL,MODEL (an OpenAI-compatible endpoint)",
        )
    return Judge.parse(spec.judge, max_tokens=spec.judge_max_tokens)


def check_work(spec: SweepSpec, limits: SweepLimits, problems: dict[str, list]) -> None:
    """The sweep's total units × max new tokens, once the problems are known."""
    for bench, found in problems.items():
        limits.check(f"{bench}'s problems", len(found), "problems")
    units = configuration_count(spec) * spec.k * sum(len(found) for found in problems.values())
    tokens = _max_new_tokens(spec)
    what = f"the sweep's work ({units:,} answers × {tokens:,} max new tokens)"
    limits.check(what, units * tokens, "work")


def _max_new_tokens(spec: SweepSpec) -> int:
    return int(spec.decoding.get("max_new_tokens", DecodingSettings.max_new_tokens))


CHECKPOINT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_checkpoint_names(spec: SweepSpec) -> None:
    """Checkpoint rows: plain names, a path each, and a backend that runs them here."""
    for name, path in spec.checkpoints.items():
        if not CHECKPOINT_NAME.fullmatch(name):
            raise UserError(
                f"checkpoint name {name!r}: use letters, digits, '_', '.', '-' (64 at most)"
            )
        if not path:
            raise UserError(f"checkpoint {name}: give its folder as NAME=PATH")
    if spec.checkpoints and spec.backend != "transformers":
        raise UserError("checkpoint rows run on the transformers backend; drop --backend vllm")


def check_pool(spec: SweepSpec, on_pool: bool) -> None:
    """Checkpoint rows are generated by this process: a Ray pool's workers hold mergers."""
    if on_pool and spec.checkpoints:
        raise UserError("checkpoint rows run in this process, not on a Ray pool: drop --ray")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_revision() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except OSError:
        return None
    return done.stdout.strip() or None


def parent_hashes(spec: SweepSpec) -> dict[str, str | None]:
    from spectrum.weights.checkpoint import open_checkpoint

    return {
        role: open_checkpoint(path, allow_pickle=spec.allow_pickle).content_hash() if path else None
        for role, path in (
            ("direct", spec.direct),
            ("thinking", spec.thinking),
            ("base", spec.base),
        )
    }


def checkpoint_hash(spec: SweepSpec, name: str) -> str:
    """The content hash of checkpoint ``name`` (remembered per file, so cheap again)."""
    from spectrum.weights.checkpoint import open_checkpoint

    return open_checkpoint(spec.checkpoints[name], allow_pickle=spec.allow_pickle).content_hash()


def merge_spec(spec: SweepSpec, config: dict[str, Any]) -> MergeSpec:
    """The checked ``MergeSpec`` of one configuration; a baseline runs on a linear merge."""
    method = "linear" if config["method"] in results.BASELINES else config["method"]
    return MergeSpec(
        method,
        config["lam"],
        spec.params.get(method) or {},
        layers=spec.layers,
        modules=spec.modules,
        seed=spec.seed,
        module_lams=config.get("module_lams"),
    ).checked(has_base=spec.base is not None)


TEMPLATES = ("direct", "thinking")


@lru_cache(maxsize=8)
def chat_template_of(path: str) -> str | None:
    """The chat template a checkpoint's tokenizer files carry (None: it has none)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path).chat_template


def template_role(spec: SweepSpec, lam: float) -> str:
    """Whose template a configuration runs with; ``shared`` when the parents' are equal."""
    if spec.template not in TEMPLATES:
        raise UserError(f"--template must be direct or thinking, not {spec.template!r}")
    if chat_template_of(spec.direct) == chat_template_of(spec.thinking):
        return "shared"
    return "direct" if lam == 0 else spec.template


def chat_template(spec: SweepSpec, config: dict[str, Any]) -> str | None:
    """The chat template text of a configuration (None: the tokenizer's own)."""
    role = config.get("template")
    return None if role is None else chat_template_of(getattr(spec, role))


def _module_lam_grid(spec: SweepSpec) -> list[dict[str, float] | None]:
    """Every combination of the module kinds' λ grids (``[None]`` when there are none)."""
    if not spec.module_lams:
        return [None]
    kinds = sorted(spec.module_lams)
    return [
        dict(zip(kinds, values, strict=True))
        for values in product(*(spec.module_lams[k] for k in kinds))
    ]


def _baselines(spec: SweepSpec) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(method, params, decoding overrides) of each baseline the spec asks for."""
    found = [
        (
            "budget_forcing",
            {"budget": budget, "waits": spec.think_waits},
            {
                "think_budget": budget,
                "think_end": spec.think_end,
                "think_waits": spec.think_waits,
                "answer_cue": spec.answer_cue,
            },
        )
        for budget in spec.budgets
    ]
    if spec.no_thinking:
        found.append(("no_thinking", {}, {"no_thinking": True}))
    return found


def default_provider(spec: SweepSpec):
    """The live merger of ``spec.backend``: transformers, or vLLM (here when it imports,
    else in a worker under the vLLM venv ``./run.sh`` builds)."""
    if spec.backend == "vllm":
        from spectrum.live.vllm_process import load_vllm_merger

        return load_vllm_merger(spec.direct, spec.thinking, spec.base)
    from spectrum.live import LiveMerger

    return LiveMerger.load(spec.direct, spec.thinking, spec.base, allow_pickle=spec.allow_pickle)


def _configurations(spec: SweepSpec, hashes: dict) -> list[dict[str, Any]]:
    """One dict per (method, λ[, module λs]) and per baseline: everything that decides a
    sample's distribution (its hash is the configuration id)."""
    common = dict(
        parents=hashes,
        layers=spec.layers,
        modules=list(spec.modules) if spec.modules else None,
        merge_seed=spec.seed,
        data_seed=spec.data_seed,
    )
    configs = []
    for method in spec.methods:
        for lam in spec.lams:
            for module_lams in _module_lam_grid(spec):
                config = dict(common, method=method, lam=check_lam(lam))
                if module_lams is not None:  # only when used: older ids stay the same
                    config["module_lams"] = module_lams
                _with_template(spec, config)
                config["params"] = dict(merge_spec(spec, config).params)
                config["decoding"] = DecodingSettings.for_lam(lam, **spec.decoding).as_dict()
                configs.append(config)
    for lam in spec.baseline_lams:
        for method, params, decoding in _baselines(spec):
            config = dict(common, method=method, lam=check_lam(lam), params=params)
            merge_spec(spec, config)  # the linear merge it runs on must be valid
            _with_template(spec, config)
            settings = DecodingSettings.for_lam(lam, **spec.decoding, **decoding)
            configs.append(dict(config, decoding=settings.as_dict()))
    for name in sorted(spec.checkpoints):
        # λ = 1: it runs as the thinking side does (decoding defaults); not a point on the
        # path. Its weights are named by their hash, so other weights get another id.
        settings = DecodingSettings.for_lam(1.0, **spec.decoding)
        configs.append(
            dict(
                common, method=results.CHECKPOINT, lam=1.0, params={"name": name},
                checkpoint=checkpoint_hash(spec, name), template=results.CHECKPOINT,
                decoding=settings.as_dict(),
            )
        )  # fmt: skip
    return configs


def _with_template(spec: SweepSpec, config: dict[str, Any]) -> None:
    """Name the template in the configuration only where the parents' differ: a pair with
    one template keeps the ids its rows always had."""
    role = template_role(spec, config["lam"])
    if role != "shared":
        config["template"] = role


def _rows(
    config: dict, cid: str, run_id: str, bench: str, grader: str, work, gens: list[Generation]
) -> pd.DataFrame:
    now = datetime.now(UTC).replace(tzinfo=None)
    rows = []
    for (problem, sample_idx), gen in zip(work, gens, strict=True):
        graded = grade(grader, gen.text, problem.gold)
        rows.append(
            dict(
                config_id=cid,
                run_id=run_id,
                method=config["method"],
                lam=config["lam"],
                params=json.dumps(config["params"], sort_keys=True, allow_nan=False),
                layers=config["layers"],
                modules=",".join(config["modules"]) if config["modules"] else None,
                module_lams=json.dumps(config["module_lams"], allow_nan=False)
                if "module_lams" in config
                else None,
                merge_seed=config["merge_seed"],
                **{k: config["decoding"][k] for k in ("temperature", "top_p", "top_k")},
                max_new_tokens=config["decoding"]["max_new_tokens"],
                do_sample=config["decoding"]["do_sample"],
                benchmark=bench,
                level=problem.level,
                problem_id=problem.id,
                sample_idx=sample_idx,
                prompt=problem.prompt,
                response=gen.text,
                n_tokens=gen.n_tokens,
                n_inserted=gen.n_inserted,
                template=config.get("template", "shared"),
                finished=gen.finished,
                thinks=gen.thinks,
                extracted=graded.extracted,
                gold=problem.gold,
                correct=graded.correct,
                style_bleed=style_bleed(gen.text),
                latency_s=gen.latency_s,
                created_at=now,
            )
        )
    return pd.DataFrame(rows)


def _record_run(con, spec: SweepSpec, run_id: str, hashes: dict, command: str) -> None:
    run = dict(
        run_id=run_id,
        created_at=datetime.now(UTC).replace(tzinfo=None),
        command=command,
        config=json.dumps(asdict(spec), sort_keys=True, allow_nan=False),
        decoding=json.dumps(spec.decoding, sort_keys=True, allow_nan=False),
        versions=json.dumps(package_versions(), sort_keys=True, allow_nan=False),
        git_revision=git_revision(),
        direct=spec.direct,
        thinking=spec.thinking,
        base=spec.base,
        direct_hash=hashes["direct"],
        thinking_hash=hashes["thinking"],
        base_hash=hashes["base"],
    )
    store.insert_frame(con, "runs", pd.DataFrame([run]))


@dataclass(frozen=True)
class Cell:
    """One configuration's missing units on one benchmark, at most a batch of them: what a
    worker generates in one go and the driver commits in one transaction."""

    config: dict[str, Any]
    benchmark: str
    units: tuple[tuple[Problem, int], ...]  # (problem, sample_idx)
    seed: int

    @property
    def config_id(self) -> str:
        return store.config_id(self.config)


def cell_seed(sweep_seed: int, config_id: str, benchmark: str, problem_id: str, sample: int) -> int:
    """The sampling seed of the cell that starts at (problem, sample): a function of the
    sweep and the unit only, so every worker, and every rerun, draws the same samples."""
    key = f"{sweep_seed}/{config_id}/{benchmark}/{problem_id}/{sample}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") >> 1


# (config, benchmark, missing (problem, sample_idx)): one entry of the sweep's plan.
Entry = tuple[dict[str, Any], str, list[tuple[Problem, int]]]


def _plan(con, configs, problems, k) -> list[Entry]:
    """(config, benchmark, missing (problem, sample_idx)) for every config with work left."""
    todo = []
    for config in configs:
        cid = store.config_id(config)
        for bench, bench_problems in problems.items():
            done = store.done_keys(con, cid, bench)
            missing = [(p, s) for p in bench_problems for s in range(k) if (p.id, s) not in done]
            if missing:
                todo.append((config, bench, missing))
    return todo


def cells_of(todo: list[Entry], spec: SweepSpec) -> list[Cell]:
    """The plan's missing units cut into cells of ``spec.batch_size``.

    Cells are committed whole, so the units still missing after an interruption are whole
    cells; cutting them again gives back the same cells (only a configuration's last cell
    can be short, and it stays last) and so the same seeds.
    """
    cells = []
    for config, bench, missing in todo:
        cid = store.config_id(config)
        for start in range(0, len(missing), spec.batch_size):
            units = tuple(missing[start : start + spec.batch_size])
            first, sample = units[0]
            cells.append(
                Cell(config, bench, units, cell_seed(spec.seed, cid, bench, first.id, sample))
            )
    return cells


def run_cell(provider, generator, spec: SweepSpec, cell: Cell, run_id: str) -> pd.DataFrame:
    """Merge the cell's configuration (unless loaded), generate and grade: its rows."""
    settings = DecodingSettings(**cell.config["decoding"])
    conversations = [problem.conversation() for problem, _ in cell.units]
    template = chat_template(spec, cell.config)
    # Merged and generated in one hold: a page's other sweep or chat sharing the provider
    # cannot re-merge between the two and have this cell stored under the wrong merge.
    with provider.holding(merge_spec(spec, cell.config)):
        gens = generator.generate(conversations, settings, seed=cell.seed, template=template)
    grader = get_benchmark(cell.benchmark).grader
    return _rows(cell.config, cell.config_id, run_id, cell.benchmark, grader, cell.units, gens)


class Progress:
    """The sweep's bar: units done of total (tqdm adds rate and ETA) and tokens/s."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = tqdm(total=total, desc="sweep", unit="sample", disable=not enabled)
        self.tokens, self.started = 0, time.perf_counter()

    def update(self, cell: Cell, rows: pd.DataFrame) -> None:
        self.tokens += int(rows["n_tokens"].sum())
        rate = self.tokens / max(time.perf_counter() - self.started, 1e-9)
        c = cell.config
        what = f"{c['method']} λ={c['lam']:g}"
        if c["method"] == results.CHECKPOINT:
            what = f"checkpoint {c['params']['name']}"
        self.bar.set_postfix_str(f"{what} {cell.benchmark} {rate:.0f} tok/s")
        self.bar.update(len(cell.units))

    def close(self) -> None:
        self.bar.close()


class Sweeper:
    """An open sweep: the DB's sweep lock held, problems loaded, parents hashed, the
    provider made on first need and kept (``search`` evaluates one λ at a time through the
    same one). The DB itself is opened per transaction.

    With a ``pool`` (``spectrum.eval.distributed.RayPool``) the cells are generated by the
    pool's workers instead, and this process only plans and writes.
    """

    def __init__(
        self,
        spec: SweepSpec,
        db: str | Path,
        *,
        provider_factory: Callable[[SweepSpec], Any] = default_provider,
        progress: bool = True,
        command: str = "",
        report: Callable[[SweepProgress], None] | None = None,
        stop: threading.Event | None = None,
        batch_lams: bool | None = None,
        pool: Any = None,
        limits: SweepLimits = SweepLimits(),
    ) -> None:
        """``report`` hears of every stored batch (of a whole λ grid, when batched); setting
        ``stop`` ends the sweep after the batch in flight is stored (the dashboard's progress
        bar and Stop button)."""
        self.spec, self.progress, self.command, self.pool = spec, progress, command, pool
        self.report, self.stop = report, stop
        # Affine methods decode all λ of the grid in one batch on one spectrum model
        # (spectrum.eval.sweep_batched): on by default for the transformers backend when the
        # sweep makes its own models; a caller's own provider is used as given. A Ray pool
        # runs per-λ cells (its workers hold live mergers).
        if batch_lams is None:
            batch_lams = provider_factory is default_provider
        self.batch_lams = batch_lams and spec.backend == "transformers" and pool is None
        self._lam_batches = None
        # Why the sweep re-merges per λ where it would batch (None: it did not have to).
        self.fallback: str | None = None
        self.db = Path(db)
        # Sizes and integers, then the problems and the total work: before the lock or any
        # file is touched.
        check_spec(spec, limits)
        check_pool(spec, pool is not None)
        self.problems = {
            b: load_problems(
                b, path=spec.data.get(b), limit=spec.limit, seed=spec.data_seed, levels=spec.levels
            )
            for b in spec.benchmarks
        }
        check_work(spec, limits, self.problems)
        self.judge = judge_of(spec)
        if self.judge is not None:
            self.judge.check()  # an endpoint that does not answer is refused before any work
        self._held = ExitStack()
        # First of all: a second sweep into the same DB is refused before doing any work.
        self._held.enter_context(store.sweep_lock(self.db))
        try:
            self._open(spec, provider_factory)
        except BaseException:
            self._held.close()
            raise

    def _open(self, spec: SweepSpec, provider_factory: Callable[[SweepSpec], Any]) -> None:
        if provider_factory is default_provider:  # refuse a pair too big before hashing it
            check_live(spec.direct, spec.thinking, spec.base, backend=spec.backend)
        self.hashes = parent_hashes(spec)
        _configurations(spec, self.hashes)  # likewise unknown methods, params and λ
        self.run_id = uuid.uuid4().hex[:16]
        self._provider_factory = provider_factory
        self._provider = None
        self._run_recorded = False
        with store.opened(self.db):  # creates the schema now: a bad path fails before work
            pass

    def run(
        self, methods: tuple[str, ...] | None = None, lams: tuple[float, ...] | None = None
    ) -> SweepResult:
        """Generate every missing sample of the given (default: the spec's) methods × λs."""
        spec = replace(self.spec, methods=methods or self.spec.methods, lams=lams or self.spec.lams)
        configs = _configurations(spec, self.hashes)
        with store.opened(self.db) as con:
            todo = _plan(con, configs, self.problems, spec.k)
        missing = sum(len(w) for _, _, w in todo)
        total = len(configs) * spec.k * sum(len(p) for p in self.problems.values())
        generated = 0
        if todo:
            if not self._run_recorded:
                with store.opened(self.db) as con:
                    _record_run(con, self.spec, self.run_id, self.hashes, self.command)
                self._run_recorded = True
            generated = self._generate(todo)
        return SweepResult(self.run_id, generated, total - missing, generated < missing)

    def config_id(self, method: str, lam: float) -> str:
        return store.config_id(
            _configurations(replace(self.spec, methods=(method,), lams=(lam,)), self.hashes)[0]
        )

    def point(self, method: str, lam: float, benchmark: str) -> Point:
        """Evaluate (or read back) one configuration: what ``spectrum search`` calls."""
        self.run(methods=(method,), lams=(lam,))
        with store.opened(self.db) as con:
            return results.point(con, self.config_id(method, lam), benchmark)

    def close(self) -> None:
        if hasattr(self._provider, "close"):  # a vLLM worker process ends with the sweep
            self._provider.close()
        self._held.close()

    def _generate(self, todo: list[Entry]) -> int:
        """Generate and store ``todo`` cell by cell (affine methods on the batched path:
        whole λ grids); return how many samples were stored."""
        if self.pool is not None:
            self.pool.start(self.spec)  # loading the parents is not part of the rate shown
        self._total = sum(len(missing) for _, _, missing in todo)
        self._done, self._started = 0, time.monotonic()
        bar = Progress(self._total, self.progress)
        try:
            if self.batch_lams:
                from spectrum.eval.sweep_batched import split_batched

                batched, todo = split_batched(todo, self.spec.lams)
                todo = self._run_batched(batched, bar) + todo
                todo = [] if self._stopped() else todo
            if todo:
                self._lam_batches = None  # its spectrum model goes before a live merger loads
            own = [entry for entry in todo if entry[0]["method"] == results.CHECKPOINT]
            todo = [entry for entry in todo if entry[0]["method"] != results.CHECKPOINT]
            self._run_checkpoints(own, bar)
            self._run_cells(cells_of(todo, self.spec) if not self._stopped() else [], bar)
        finally:
            bar.close()
        return self._done

    def _run_batched(self, batched: dict, bar: Progress) -> list[Entry]:
        """Run the grouped entries on spectrum models; return those left for per-λ cells:
        all that remain once the spectrum model cannot serve this pair (said once)."""
        from spectrum.eval.sweep_batched import LamBatches
        from spectrum.live.spectrum_modules import SpectrumUnavailable

        self._lam_batches = self._lam_batches or LamBatches(self, _rows)
        groups = list(batched.items())
        for index, ((method, bench), entries) in enumerate(groups):
            if self._stopped():
                break
            bar.bar.set_postfix_str(f"{method} all λ {bench}")
            self._report(entries[0][0], bench)
            try:
                self._lam_batches.run(entries, bar.bar)
            except SpectrumUnavailable as why:
                log.warning("%s; re-merging per λ instead", why)
                self.fallback = str(why)
                self.batch_lams, self._lam_batches = False, None
                return [entry for _, rest in groups[index:] for entry in rest]
            self._done += sum(len(missing) for _, _, missing in entries)
            self._report(entries[0][0], bench)
        return []

    def _run_cells(self, cells: list[Cell], bar: Progress) -> None:
        if self.pool is not None:
            for cell, rows in self.pool.run(self.spec, cells, self.run_id):
                self._commit(bar, cell, rows)
                if self._stopped():
                    return  # cells in flight are dropped: the next run redoes them
            return
        if not cells:
            return
        if self._provider is None:
            self._provider = self._provider_factory(self.spec)
        generator = generator_for(self._provider, batch_size=self.spec.batch_size)
        previous = None
        for cell in cells:
            if self._stopped():
                return  # every stored cell stays: the next run resumes after them
            if (cell.config_id, cell.benchmark) != previous:  # a configuration starts
                self._report(cell.config, cell.benchmark)
                previous = (cell.config_id, cell.benchmark)
            rows = run_cell(self._provider, generator, self.spec, cell, self.run_id)
            self._commit(bar, cell, rows)

    def store_rows(self, rows: pd.DataFrame) -> None:
        """Judge the rows of a judged benchmark (before the DB is opened: a judge is slow),
        then insert them in one transaction."""
        if self.judge is not None and get_benchmark(rows["benchmark"].iloc[0]).grader == "judge":
            pairs = [
                (p, strip_thinking(r))
                for p, r in zip(rows["prompt"], rows["response"], strict=True)
            ]
            judged = [judged_columns(j) for j in self.judge.judge_all(pairs)]
            rows = pd.concat([rows, pd.DataFrame(judged, index=rows.index)], axis=1)
        with store.opened(self.db) as con:  # held for this one transaction only
            store.insert_frame(con, "samples", rows)

    def _run_checkpoints(self, todo: list[Entry], bar: Progress) -> None:
        """Checkpoint rows: each checkpoint loaded as itself (one at a time, dropped after
        its cells), its cells generated and committed as any other."""
        loaded, generator = None, None
        for config, bench, missing in todo:  # a checkpoint's benchmarks come together
            name = config["params"]["name"]
            if name != loaded:
                generator = None  # the previous checkpoint goes before the next loads
                generator, loaded = checkpoint_generator(self.spec, name), name
            grader = get_benchmark(bench).grader
            for cell in cells_of([(config, bench, missing)], self.spec):
                if self._stopped():
                    return
                conversations = [problem.conversation() for problem, _ in cell.units]
                settings = DecodingSettings(**config["decoding"])
                gens = generator.generate(conversations, settings, seed=cell.seed)
                rows = _rows(config, cell.config_id, self.run_id, bench, grader, cell.units, gens)
                self._commit(bar, cell, rows)

    def _commit(self, bar: Progress, cell: Cell, rows: pd.DataFrame) -> None:
        self.store_rows(rows)
        bar.update(cell, rows)
        self._done += len(cell.units)
        self._report(cell.config, cell.benchmark)

    def _report(self, config: dict, bench: str) -> None:
        if self.report is not None:
            elapsed = time.monotonic() - self._started
            progress = SweepProgress(
                self._done, self._total, config["method"], config["lam"], bench, elapsed
            )
            self.report(progress)

    def _stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()


def checkpoint_generator(spec: SweepSpec, name: str):
    """A transformers generator of checkpoint ``name`` with its own tokenizer (and so its
    own chat template)."""
    from spectrum.devices import resolve_device
    from spectrum.generate.batch import TransformersGenerator
    from spectrum.generate.template import load_tokenizer
    from spectrum.live.loading import load_model

    path = spec.checkpoints[name]
    model = load_model(path, resolve_device("auto"), allow_pickle=spec.allow_pickle)
    return TransformersGenerator(model, load_tokenizer(path), batch_size=spec.batch_size)


def run_sweep(spec: SweepSpec, db: str | Path, **kwargs) -> SweepResult:
    """Generate and store every missing sample of ``spec``; return what was done."""
    sweeper = Sweeper(spec, db, **kwargs)
    try:
        return sweeper.run()
    finally:
        sweeper.close()
