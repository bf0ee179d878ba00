"""A merge from checkpoint folders to a checkpoint folder: the job (parents, spec, output
options) as the CLI flags, a YAML/JSON file or a merged model's ``merge_config.json`` give
it, and ``merge_checkpoints`` that streams it through the engine into a staged folder."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from spectrum import __version__
from spectrum.devices import resolve_device
from spectrum.errors import UserError
from spectrum.merge.card import model_card
from spectrum.merge.engine import merge_stream
from spectrum.merge.spec import SPEC_KEYS, MergeSpec
from spectrum.weights.checkpoint import Checkpoint, open_checkpoint
from spectrum.weights.output import (
    ShardWriter,
    check_destination,
    check_free_space,
    copy_side_files,
    os_error_message,
    parse_size,
    plan_shards,
    side_files,
    staged_folder,
    tensor_nbytes,
)
from spectrum.weights.quantized import dequantized_config
from spectrum.weights.validate import validate_parents

log = logging.getLogger("spectrum.merge")
COPY_FROM = ("direct", "thinking")
RECORD_BYTES = 1 << 20  # room for the card, merge_config.json, the index and the marker
# A merge config is a dozen keys: bounds far above that, far below harm.
CONFIG_BYTES = 1 << 20
CONFIG_ALIASES = 100
CONFIG_NODES = 10_000


@dataclass(frozen=True)
class MergeConfig:
    """One merge job: the parents, the ``MergeSpec`` and how to write the result.

    Files and flags give the spec's keys flat (``method``, ``lam``, ``params``, ...), as
    ``merge_config.json`` has always stored them; ``from_dict`` gathers them into ``spec``.
    """

    direct: str
    thinking: str
    base: str | None = None
    spec: MergeSpec = field(default_factory=MergeSpec)
    device: str = "auto"
    copy_from: str = "thinking"
    allow_pickle: bool = False
    allow_extrapolation: bool = False
    max_shard_size: str = "5GB"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MergeConfig:
        if "tool" in data and isinstance(data.get("config"), dict):
            data = data["config"]  # a merged model's merge_config.json reproduces its merge
        job_keys = {f.name for f in fields(cls)} - {"spec"}
        unknown = sorted(set(data) - job_keys - set(SPEC_KEYS))
        if unknown:
            known = ", ".join(sorted(job_keys | set(SPEC_KEYS)))
            raise UserError(f"unknown merge config key {unknown[0]!r}; known: {known}")
        missing = [key for key in ("direct", "thinking") if not data.get(key)]
        if missing:
            raise UserError(f"merge config needs {' and '.join(missing)}")
        for key in job_keys:
            kind = bool if key in ("allow_pickle", "allow_extrapolation") else str
            if data.get(key) is not None and not isinstance(data[key], kind):
                raise UserError(
                    f"merge config key {key!r} must be a {kind.__name__}, not "
                    f"{type(data[key]).__name__} {_short(data[key])}"
                )
        params = data.get("params") or {}
        if not isinstance(params, Mapping):
            raise UserError(f"params must be a mapping of name to value, not {params!r}")
        spec_fields = {key: data[key] for key in SPEC_KEYS if data.get(key) is not None}
        job = {key: data[key] for key in job_keys if data.get(key) is not None}
        return cls(**job, spec=MergeSpec(**spec_fields))

    @classmethod
    def from_file(cls, path: str | Path) -> MergeConfig:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"no such merge config file: {path}")
        if path.stat().st_size > CONFIG_BYTES:
            raise UserError(
                f"{path}: {path.stat().st_size:,} bytes, more than a merge config's "
                f"{CONFIG_BYTES:,}"
            )
        try:
            text = path.read_text()
            _check_aliases(path, text)
            data = yaml.safe_load(text)  # YAML is a superset of JSON
        except UnicodeDecodeError:
            raise UserError(f"{path}: not a text file") from None
        except yaml.YAMLError as error:
            raise UserError(f"{path}: not valid YAML/JSON ({str(error).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected a mapping of merge settings")
        _check_node_count(path, data)
        return cls.from_dict(data)

    def checked(self) -> MergeConfig:
        """Check everything that needs no file: the spec (base, λ, parameters), the output
        options and the device; the spec comes back with its parameters resolved."""
        spec = self.spec.checked(
            has_base=self.base is not None, allow_extrapolation=self.allow_extrapolation
        )
        if self.copy_from not in COPY_FROM:
            raise UserError(f"copy_from must be one of {COPY_FROM}, not {self.copy_from!r}")
        parse_size(self.max_shard_size)
        resolve_device(self.device)
        return replace(self, spec=spec)

    def to_dict(self) -> dict[str, Any]:
        """The flat form files use: job keys and the spec's keys side by side."""
        job = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "spec"}
        return {**job, **self.spec.to_json()}


def _check_aliases(path: Path, text: str) -> None:
    """Refuse a file with more aliases than a merge config needs, from its events alone:
    aliases of aliases (a "billion laughs" file) expand exponentially once used."""
    aliases = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        aliases += isinstance(event, yaml.AliasEvent)
        if aliases > CONFIG_ALIASES:
            raise UserError(
                f"{path}: more than {CONFIG_ALIASES} YAML aliases (*name); a merge config "
                "needs none"
            )


def _check_node_count(path: Path, data: Any) -> None:
    """Refuse a config whose values, aliases expanded, hold more than CONFIG_NODES items
    (counted with an early stop, so an exponential structure costs CONFIG_NODES steps)."""
    stack, seen = [data], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > CONFIG_NODES:
            raise UserError(f"{path}: more than {CONFIG_NODES:,} values, aliases expanded")
        if isinstance(node, Mapping):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list | tuple | set):
            stack.extend(node)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def merge_checkpoints(
    config: MergeConfig,
    out: str | Path,
    *,
    force: bool = False,
    progress: bool = True,
    protected: Mapping[str, Path] | None = None,
) -> Path:
    """Merge the checkpoints ``config`` names into the folder ``out``; return ``out``.

    ``out`` may be, hold or lie inside none of the parents nor the ``protected`` paths
    (label → path), and ``force`` replaces only an earlier output of this tool.
    """
    config = config.checked()
    spec, device = config.spec, resolve_device(config.device)
    out = Path(out)
    sources = {"direct": config.direct, "thinking": config.thinking, "base": config.base}
    # Fail fast, before opening (or downloading) parents: local ones are checked already.
    local = {f"{role} parent": Path(s) for role, s in sources.items() if s and Path(s).exists()}
    check_destination(out, force, {**local, **(protected or {})})
    parents = {
        role: open_checkpoint(source, allow_pickle=config.allow_pickle)
        for role, source in sources.items()
        if source is not None
    }
    opened = {f"{role} parent": checkpoint.path for role, checkpoint in parents.items()}
    check_destination(out, force, {**opened, **(protected or {})})
    for warning in validate_parents(
        parents["direct"], parents["thinking"], parents.get("base"), template_from=config.copy_from
    ):
        log.warning(warning)
    direct = parents["direct"]
    num_layers = int(direct.config.get("num_hidden_layers") or 1)
    spec.scope.check_layers(num_layers)
    names = direct.names()
    shards = plan_shards(
        [(name, direct.shape(name), direct.dtype(name)) for name in names],
        parse_size(config.max_shard_size),
    )
    names = [name for entries in shards for name, _, _ in entries]
    weights = sum(tensor_nbytes(shape, dtype) for e in shards for _, shape, dtype in e)
    copied = sum(path.stat().st_size for path in side_files(parents[config.copy_from].path))
    check_free_space(out, weights + copied + RECORD_BYTES)
    try:
        _write_merge(config, parents, out, shards, num_layers, device, progress, force)
    except OSError as error:  # read-only, permission, disk full: the staging is gone already
        raise UserError(os_error_message(error, out)) from None
    return out


def _write_merge(
    config: MergeConfig,
    parents: dict[str, Checkpoint],
    out: Path,
    shards: list,
    num_layers: int,
    device: Any,
    progress: bool,
    force: bool,
) -> None:
    names = [name for entries in shards for name, _, _ in entries]
    # Hashing reads every parent file once; it runs beside the merge on the other core.
    with ThreadPoolExecutor(1, thread_name_prefix="spectrum-hash") as pool:
        hashes = {role: pool.submit(ckpt.content_hash) for role, ckpt in parents.items()}
        with staged_folder(out, force=force) as staging:
            writer = ShardWriter(staging.path, shards)
            stream = merge_stream(
                parents["direct"],
                parents["thinking"],
                parents.get("base"),
                config.spec,
                names,
                num_layers,
                device=device,
                progress=progress,
            )
            try:
                for name, piece in stream:
                    writer.add(name, piece)
            except BaseException:
                writer.abort()
                raise
            writer.close()
            staging.digests.update(writer.digests)
            copied = copy_side_files(parents[config.copy_from].path, staging.path)
            if parents[config.copy_from].quantization is not None:
                # Rewritten before the marker hashes the side files: it records this text.
                _write_dequantized_config(staging.path / "config.json")
            record = merge_record(config, {r: (parents[r], h.result()) for r, h in hashes.items()})
            text = json.dumps(record, indent=2, allow_nan=False)
            (staging.path / "merge_config.json").write_text(text + "\n")
            (staging.path / "README.md").write_text(model_card(record, copied))


def _write_dequantized_config(path: Path) -> None:
    """The merged weights are plain bfloat16: a quantization_config would make transformers
    look for scales that are not there."""
    config = json.loads(path.read_text())
    path.write_text(json.dumps(dequantized_config(config), indent=2) + "\n")


def merge_record(config: MergeConfig, parents: dict[str, tuple[Checkpoint, str]]) -> dict[str, Any]:
    """What ``merge_config.json`` holds: enough to reproduce and to audit the merge."""
    spec = config.spec
    return {
        "tool": "thinking-spectrum",
        "version": __version__,
        "method": spec.method,
        "lam": spec.lam,
        "params": dict(spec.params),
        "seed": spec.seed,
        "scope": spec.scope.describe(),
        "copy_from": config.copy_from,
        "parents": {
            role: {"source": checkpoint.source, "content_hash": f"sha256:{digest}"}
            for role, (checkpoint, digest) in parents.items()
        },
        "config": config.to_dict(),
    }
