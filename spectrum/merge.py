"""The merge engine: stream tensors through a method, in memory or from checkpoint to folder.

Both APIs share one loop (``merge_stream``): for each tensor, read the parents, cast to
float32 on the merge device, ``prepare`` then ``apply`` at the tensor's strength, cast back
to the direct parent's dtype. Elementwise methods (linear, slerp, task_arithmetic) and
copied tensors go through in slices of ``CHUNK`` elements, read straight from the files,
so memory holds a few slices whatever the model and the float32 copies stay in cache; the
others get whole tensors. Tensors outside the scope (and non-float tensors) are the direct
parent's bytes untouched. Methods with ``global_stats`` first get streaming statistics
passes that re-read the parents, so no pass ever holds the model. The next pieces are read
(and prepared) by a background thread while the current one is merged, and a writer
thread puts finished bytes on disk.
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml
from torch import Tensor
from tqdm import tqdm

from spectrum import __version__
from spectrum.checkpoint import Checkpoint, open_checkpoint
from spectrum.errors import UserError
from spectrum.methods import MergeMethod, Parents, get_method, resolve_params
from spectrum.methods.base import chunk_spans, sum_over_chunks
from spectrum.output import (
    ShardWriter,
    check_destination,
    copy_side_files,
    parse_size,
    plan_shards,
    staged_folder,
    tensor_nbytes,
)
from spectrum.selection import MergeScope, layer_of
from spectrum.validate import validate_parents

log = logging.getLogger("spectrum.merge")
PREFETCH = 1  # whole tensors read ahead of the one being merged: enough to hide reads
CHUNK_PREFETCH = 4  # slices read ahead in the chunked path
COPY_FROM = ("direct", "thinking")


class TensorSource(Protocol):
    def names(self) -> list[str]: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def dtype(self, name: str) -> torch.dtype: ...
    def get(self, name: str) -> Tensor: ...
    def get_slice(self, name: str, start: int, stop: int) -> Tensor: ...


class _MappingSource:
    def __init__(self, tensors: Mapping[str, Tensor]):
        self._tensors = tensors

    def names(self) -> list[str]:
        return list(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._tensors[name].shape)

    def dtype(self, name: str) -> torch.dtype:
        return self._tensors[name].dtype

    def get(self, name: str) -> Tensor:
        return self._tensors[name]

    def get_slice(self, name: str, start: int, stop: int) -> Tensor:
        return self._tensors[name].reshape(-1)[start:stop]


@dataclass(frozen=True)
class MergePlan:
    """A checked method, strength and scope: everything ``merge_stream`` needs."""

    method: MergeMethod
    lam: float
    params: dict[str, Any]
    seed: int = 0
    scope: MergeScope = field(default_factory=MergeScope)
    device: str = "cpu"


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UserError(f"unknown device {device!r}; choose cpu, cuda or auto")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but no CUDA device is available")
    return device


def check_lam(values: list[float], allow_extrapolation: bool) -> None:
    for value in values:
        if not allow_extrapolation and not 0.0 <= value <= 1.0:
            raise UserError(
                f"λ={value} is outside [0, 1] (0 = direct, 1 = thinking); "
                "pass --allow-extrapolation to extrapolate"
            )


def merge_stream(
    direct: TensorSource,
    thinking: TensorSource,
    base: TensorSource | None,
    plan: MergePlan,
    names: list[str],
    num_layers: int,
    *,
    progress: bool = False,
) -> Iterator[tuple[str, Tensor]]:
    """Yield ``(name, piece)`` in the order of ``names``: each tensor whole, or as flat pieces
    (consecutive slices of its flattened elements) when it is copied or the method is
    elementwise. Everything runs one piece at a time; see the module docstring."""
    method = plan.method
    strengths = {name: plan.scope.strength_for(name, plan.lam, num_layers) for name in names}
    merged = {n for n in names if strengths[n] is not None and direct.dtype(n).is_floating_point}
    as32 = dict(device=plan.device, dtype=torch.float32)
    chunked = [name for name in names if name in merged and method.elementwise]
    sums = _TensorSums(method, (direct, thinking), chunked, plan.device)

    def load(item: tuple[str, tuple[int, int] | None]) -> tuple[Tensor | torch.dtype, Any]:
        """The raw piece when it is copied, else its dtype and the method's prepared tensors.

        Runs in the read-ahead thread: the next piece is read *and* prepared while the
        current one is applied, and the float32 parents are dropped as soon as prepared.
        """
        name, span = item
        read = (lambda s: s.get(name)) if span is None else (lambda s: s.get_slice(name, *span))
        raw = read(direct)
        if name not in merged:
            return raw, None
        parents = Parents(
            name,
            raw.to(**as32),
            read(thinking).to(**as32),
            read(base).to(**as32) if base is not None else None,
            sums.of(name) if span is not None else None,
        )
        return raw.dtype, method.prepare(parents, plan.params, plan.seed)

    stats = None
    if method.global_stats is not None:
        in_scope = [name for name in names if name in merged]

        def prepared_stream() -> Iterator[tuple[str, dict[str, Tensor]]]:
            items = [(name, None) for name in in_scope]
            bar = tqdm(total=len(items), desc="statistics", unit="tensor", disable=not progress)
            for (name, _), (_, tensors) in _read_ahead(items, load, PREFETCH):
                yield name, tensors
                bar.update()
            bar.close()

        lams = sorted({strengths[name] for name in in_scope})
        stats = method.global_stats(prepared_stream, lams, plan.params)

    items = [item for name in names for item in _pieces(name, direct, name in merged, method)]
    total = sum(tensor_nbytes(direct.shape(name), direct.dtype(name)) for name in names)
    bar = tqdm(total=total, desc=f"merge {method.name}", unit="B", unit_scale=True,
               disable=not progress)  # fmt: skip
    prefetch = CHUNK_PREFETCH if method.elementwise else PREFETCH
    try:
        for (name, _), (kept, tensors) in _read_ahead(items, load, prefetch):
            if tensors is not None:
                merged_piece = method.apply(tensors, strengths[name], plan.params, stats)
                kept = merged_piece.to(dtype=kept).cpu()
            del tensors  # gone before the next read lands: the peak stays at a few pieces
            yield name, kept
            bar.update(kept.numel() * kept.element_size())
    finally:
        sums.close()
        bar.close()


def _pieces(
    name: str, source: TensorSource, is_merged: bool, method: MergeMethod
) -> list[tuple[str, tuple[int, int] | None]]:
    """Work items for one tensor: whole when the method needs it whole, else CHUNK slices."""
    if is_merged and not method.elementwise:
        return [(name, None)]
    return [(name, span) for span in chunk_spans(math.prod(source.shape(name)))]


class _TensorSums:
    """An elementwise method's ``tensor_sums`` per tensor: one extra read pass, run by its
    own thread up to ``LOOKAHEAD`` tensors ahead so that it overlaps the merge."""

    LOOKAHEAD = 2

    def __init__(self, method: MergeMethod, sources: tuple[TensorSource, TensorSource],
                 names: list[str], device: str):  # fmt: skip
        self._method, self._sources, self._device = method, sources, device
        self._order = names
        self._index = {name: i for i, name in enumerate(names)}
        self._submitted = 0
        self._futures: dict[str, Future] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="spectrum-sums")

    def of(self, name: str) -> Tensor | None:
        if self._method.tensor_sums is None:
            return None
        position = self._index[name]
        while self._submitted <= min(position + self.LOOKAHEAD, len(self._order) - 1):
            ahead = self._order[self._submitted]
            self._futures[ahead] = self._pool.submit(self._sum, ahead)
            self._submitted += 1
        for passed in [n for n in self._futures if self._index[n] < position]:
            del self._futures[passed]
        return self._futures[name].result()

    def _sum(self, name: str) -> Tensor:
        direct, thinking = self._sources
        slices = (
            tuple(s.get_slice(name, *span).to(self._device) for s in (direct, thinking))
            for span in chunk_spans(math.prod(direct.shape(name)))
        )
        return sum_over_chunks(self._method.tensor_sums, slices)

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


def _read_ahead(
    items: list, read: Callable[[Any], Any], prefetch: int
) -> Iterator[tuple[Any, Any]]:
    """``(item, read(item))`` in order, with the next ``prefetch`` reads running in a thread."""
    upcoming = iter(items)
    with ThreadPoolExecutor(1, thread_name_prefix="spectrum-read") as pool:
        pending: deque = deque()
        while True:
            while len(pending) <= prefetch and (item := next(upcoming, None)) is not None:
                pending.append((item, pool.submit(read, item)))
            if not pending:
                return
            item, future = pending.popleft()
            yield item, future.result()


def merge_tensors(
    direct: Mapping[str, Tensor],
    thinking: Mapping[str, Tensor],
    base: Mapping[str, Tensor] | None = None,
    *,
    method: str,
    lam: float,
    params: dict | None = None,
    seed: int = 0,
    scope: MergeScope | None = None,
    device: str = "cpu",
) -> dict[str, Tensor]:
    """Merge dicts of tensors (the parents' dtype out, on the CPU)."""
    merge_method = _method(method, base is not None)
    for role, other in (("thinking", thinking), ("base", base)):
        if other is None:
            continue
        if set(other) != set(direct):
            missing = sorted(set(direct) ^ set(other))[:5]
            raise UserError(f"direct and {role} have different tensor names: {missing}")
        wrong = [n for n in direct if tuple(direct[n].shape) != tuple(other[n].shape)]
        if wrong:
            raise UserError(f"direct and {role} differ in shape at {wrong[:5]}")
    plan = MergePlan(
        merge_method,
        lam,
        resolve_params(merge_method, params),
        seed,
        scope or MergeScope(),
        resolve_device(device),
    )
    layers = [layer for layer in map(layer_of, direct) if layer is not None]
    sources = [_MappingSource(t) if t is not None else None for t in (direct, thinking, base)]
    stream = merge_stream(*sources, plan, list(direct), max(layers, default=0) + 1)
    return _assemble(stream, {name: tuple(t.shape) for name, t in direct.items()})


def _assemble(stream: Iterator[tuple[str, Tensor]], shapes: dict[str, tuple]) -> dict[str, Tensor]:
    """Whole tensors from the stream's pieces."""
    merged: dict[str, Tensor] = {}
    filled: dict[str, int] = {}
    for name, piece in stream:
        if name not in merged and tuple(piece.shape) == shapes[name]:
            merged[name] = piece  # a whole tensor
            continue
        if name not in merged:
            merged[name], filled[name] = torch.empty(shapes[name], dtype=piece.dtype), 0
        merged[name].view(-1)[filled[name] : filled[name] + piece.numel()] = piece
        filled[name] += piece.numel()
    return merged


def _method(name: str, has_base: bool) -> MergeMethod:
    method = get_method(name)
    if method.needs_base and not has_base:
        raise UserError(f"method {name} needs a base model; pass --base PATH")
    return method


def _as_tuple(value: Any, kind: type) -> tuple | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        return tuple(kind(item.strip() if isinstance(item, str) else item) for item in items)
    except ValueError:
        raise UserError(f"cannot read {value!r} as a list of {kind.__name__}") from None


@dataclass
class MergeConfig:
    """One merge, as the CLI flags, a YAML/JSON file or ``merge_config.json`` give it."""

    direct: str
    thinking: str
    base: str | None = None
    method: str = "linear"
    lam: float = 0.5
    params: dict = field(default_factory=dict)
    seed: int = 0
    layers: str | None = None
    modules: tuple[str, ...] | None = None
    lam_schedule: tuple[float, ...] | None = None
    device: str = "auto"
    copy_from: str = "thinking"
    allow_pickle: bool = False
    allow_extrapolation: bool = False
    max_shard_size: str = "5GB"

    def __post_init__(self) -> None:
        self.modules = _as_tuple(self.modules, str)
        self.lam_schedule = _as_tuple(self.lam_schedule, float)
        if self.layers is not None:
            self.layers = str(self.layers)
        try:
            self.lam = float(self.lam)
            self.seed = int(self.seed)
        except (TypeError, ValueError):
            raise UserError(
                f"lam must be a number and seed an integer ({self.lam!r}, {self.seed!r})"
            ) from None
        if not isinstance(self.params, dict):
            raise UserError(f"params must be a mapping of name to value, not {self.params!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MergeConfig:
        if "tool" in data and isinstance(data.get("config"), dict):
            data = data["config"]  # a merged model's merge_config.json reproduces its merge
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(
                f"unknown merge config key {unknown[0]!r}; known: {', '.join(sorted(known))}"
            )
        missing = [key for key in ("direct", "thinking") if not data.get(key)]
        if missing:
            raise UserError(f"merge config needs {' and '.join(missing)}")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> MergeConfig:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"no such merge config file: {path}")
        try:
            data = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
        except yaml.YAMLError as error:
            raise UserError(f"{path}: not valid YAML/JSON ({str(error).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected a mapping of merge settings")
        return cls.from_dict(data)

    def scope(self) -> MergeScope:
        return MergeScope(self.layers, self.modules, self.lam_schedule)

    def plan(self) -> MergePlan:
        """Check everything that needs no file: method, base, λ, parameters, scope, device."""
        method = _method(self.method, self.base is not None)
        check_lam([self.lam, *(self.lam_schedule or ())], self.allow_extrapolation)
        if self.copy_from not in COPY_FROM:
            raise UserError(f"copy_from must be one of {COPY_FROM}, not {self.copy_from!r}")
        parse_size(self.max_shard_size)
        params = resolve_params(method, self.params)
        return MergePlan(
            method, self.lam, params, self.seed, self.scope(), resolve_device(self.device)
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["modules"] = list(self.modules) if self.modules is not None else None
        data["lam_schedule"] = list(self.lam_schedule) if self.lam_schedule is not None else None
        return data


def merge_checkpoints(
    config: MergeConfig, out: str | Path, *, force: bool = False, progress: bool = True
) -> Path:
    """Merge the checkpoints ``config`` names into the folder ``out``; return ``out``."""
    plan = config.plan()
    out = Path(out)
    check_destination(out, force, [])  # fail fast, before opening (or downloading) parents
    parents = {
        role: open_checkpoint(source, allow_pickle=config.allow_pickle)
        for role, source in (
            ("direct", config.direct),
            ("thinking", config.thinking),
            ("base", config.base),
        )
        if source is not None
    }
    check_destination(out, force, [checkpoint.path for checkpoint in parents.values()])
    for warning in validate_parents(parents["direct"], parents["thinking"], parents.get("base")):
        log.warning(warning)
    direct = parents["direct"]
    num_layers = int(direct.config.get("num_hidden_layers") or 1)
    plan.scope.check_layers(num_layers)
    names = direct.names()
    shards = plan_shards(
        [(name, direct.shape(name), direct.dtype(name)) for name in names],
        parse_size(config.max_shard_size),
    )
    names = [name for entries in shards for name, _, _ in entries]
    # Hashing reads every parent file once; it runs beside the merge on the other core.
    with ThreadPoolExecutor(1, thread_name_prefix="spectrum-hash") as pool:
        hashes = {role: pool.submit(ckpt.content_hash) for role, ckpt in parents.items()}
        with staged_folder(out) as staging:
            writer = ShardWriter(staging, shards)
            stream = merge_stream(
                direct,
                parents["thinking"],
                parents.get("base"),
                plan,
                names,
                num_layers,
                progress=progress,
            )
            try:
                for name, piece in stream:
                    writer.add(name, piece)
            except BaseException:
                writer.abort()
                raise
            writer.close()
            copied = copy_side_files(parents[config.copy_from].path, staging)
            record = merge_record(
                config, plan, {r: (parents[r], h.result()) for r, h in hashes.items()}
            )
            (staging / "merge_config.json").write_text(json.dumps(record, indent=2) + "\n")
            (staging / "README.md").write_text(model_card(record, copied))
    return out


def merge_record(
    config: MergeConfig, plan: MergePlan, parents: dict[str, tuple[Checkpoint, str]]
) -> dict[str, Any]:
    """What ``merge_config.json`` holds: enough to reproduce and to audit the merge."""
    return {
        "tool": "thinking-spectrum",
        "version": __version__,
        "method": plan.method.name,
        "lam": plan.lam,
        "params": plan.params,
        "seed": plan.seed,
        "scope": plan.scope.describe(),
        "copy_from": config.copy_from,
        "parents": {
            role: {"source": checkpoint.source, "content_hash": f"sha256:{digest}"}
            for role, (checkpoint, digest) in parents.items()
        },
        "config": config.to_dict(),
    }


def model_card(record: dict[str, Any], copied: list[str]) -> str:
    parents = record["parents"]
    base_models = "".join(f"  - {p['source']}\n" for p in parents.values())
    rows = "".join(
        f"| {role} | `{p['source']}` | `{p['content_hash'][:23]}…` |\n"
        for role, p in parents.items()
    )
    params = ", ".join(f"{k}={v!r}" for k, v in record["params"].items()) or "none"
    scope = record["scope"]
    where = ", ".join(f"{k}: {v}" for k, v in scope.items() if v is not None) or "every tensor"
    return (
        f"---\nlibrary_name: transformers\ntags:\n  - merge\n  - thinking-spectrum\n"
        f"base_model:\n{base_models}---\n\n"
        f"# Merged model: {record['method']} at λ = {record['lam']}\n\n"
        f"Made with Thinking Spectrum {record['version']} by merging a direct (instruct) and a "
        f"thinking model's weights. λ = 0 is the direct parent, λ = 1 the thinking parent.\n\n"
        f"- method: `{record['method']}`, parameters: {params}, seed: {record['seed']}\n"
        f"- applied to: {where} (everything else is the direct parent's)\n"
        f"- config and tokenizer files from the {record['copy_from']} parent: "
        f"{', '.join(copied) or 'none'}\n\n"
        f"| parent | source | content hash |\n|---|---|---|\n{rows}\n"
        "Reproduce with `spectrum merge --config merge_config.json --out DIR`.\n"
    )
