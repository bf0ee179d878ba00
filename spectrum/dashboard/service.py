"""What the dashboard does, without Gradio: the loaded pair, one chat turn on three models,
votes, export, and the folders the page may name.

The direct and thinking columns answer from the plain parents. The merged column answers
from the live merger's model *inside* ``merger.session()`` and is labelled with the merge
that session reports — never with what a slider shows — so a re-merge requested while it
streams (by this page or another) cannot mislabel it: ``set()`` waits for the session.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import shutil
import tempfile
import threading
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from transformers import AutoModelForCausalLM

from spectrum.dashboard import linked
from spectrum.dashboard.explorer import Results, analyze_pair, load_results, sample_responses
from spectrum.dashboard.votes import COLUMNS, Standing, Vote, leaderboard, record_vote
from spectrum.devices import resolve_device
from spectrum.errors import UserError
from spectrum.eval.benchmarks import BENCHMARKS
from spectrum.eval.benchmarks.synthetic import LEVELS, make_problems
from spectrum.eval.sweep import (
    SweepLimits,
    SweepProgress,
    SweepResult,
    SweepSpec,
    parse_lams,
    run_sweep,
)
from spectrum.generate.batch import DecodingSettings
from spectrum.generate.chat import ChatUpdate, prompt_ids, stream_columns, stream_reply
from spectrum.generate.template import load_tokenizer
from spectrum.live import LiveMerger, LoadedMerge
from spectrum.live.spectrum_model import SpectrumModel, SpectrumRow
from spectrum.merge import MergeConfig, MergeSpec, merge_checkpoints
from spectrum.methods import REGISTRY, MergeMethod, get_method
from spectrum.weights.checkpoint import open_checkpoint
from spectrum.weights.output import check_complete_output
from spectrum.weights.planner import check_dashboard
from spectrum.weights.validate import validate_parents

log = logging.getLogger("spectrum.dashboard")
REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "assets"
DEFAULT_PAIR = ASSETS / "pair"
SHIPPED_DB = ASSETS / "spectrum.duckdb"


def _default_db() -> Path:
    """Votes and page-launched sweeps are written here, never into the tracked shipped file:
    on a Space with persistent storage (a writable ``/data``) there, so they survive a
    restart; elsewhere under ``results/``."""
    persistent = Path(os.environ.get("SPECTRUM_PERSISTENT_DIR", "/data"))
    if persistent.is_dir() and os.access(persistent, os.W_OK):
        return persistent / "spectrum.duckdb"
    return REPO / "results" / "spectrum.duckdb"


DEFAULT_DB = _default_db()
EXPORTS = REPO / "exports"
SAMPLING_MODES = ("per-model defaults", "greedy", "custom")
# What one page sweep may ask for (one unauthenticated request): far below the CLI's.
PAGE_SWEEP_LIMITS = SweepLimits(grid=101, k=16, problems=1000, new_tokens=4096, work=20_000_000)


def pair_sources(
    direct: str | Path | None, thinking: str | Path | None, base: str | Path | None
) -> tuple[str | Path, str | Path, str | Path | None]:
    """The pair a command names, or the embedded pair with its base (every method then
    has what it needs): what `spectrum app` and `spectrum serve` both load."""
    if direct is None and not (DEFAULT_PAIR / "direct").is_dir():
        raise UserError(
            f"the embedded pair is missing from {DEFAULT_PAIR}; pass --direct/--thinking"
        )
    if direct is None and base is None and (DEFAULT_PAIR / "base").is_dir():
        base = DEFAULT_PAIR / "base"
    return direct or DEFAULT_PAIR / "direct", thinking or DEFAULT_PAIR / "thinking", base


def working_db(db: Path) -> Path:
    """The default results DB starts as a copy of the shipped one (explorer shows its data)."""
    if db == DEFAULT_DB.resolve() and not db.exists() and SHIPPED_DB.exists():
        db.parent.mkdir(parents=True, exist_ok=True)
        partial = db.with_name(f".{db.name}.tmp-{os.getpid()}")
        shutil.copyfile(SHIPPED_DB, partial)
        os.replace(partial, db)  # atomic: a crash never leaves a half-copied DB
    return db


@dataclass(frozen=True)
class ChatLimits:
    """What one chat request may cost: a runaway answer stops at either bound."""

    max_new_tokens: int = 2048
    max_seconds: float = 120.0

    def describe(self) -> str:
        return (
            f"Each answer stops after {self.max_new_tokens} new tokens or "
            f"{self.max_seconds:g} s, whichever comes first."
        )


@dataclass(frozen=True)
class ExportQuota:
    """What the page's exports may write in one server process: each is a full model copy
    on this machine's disk, asked for by anyone who can reach the page."""

    max_exports: int = 5
    max_bytes: int = 100 * 10**9

    def describe(self) -> str:
        return (
            f"This dashboard writes at most {self.max_exports} exports and "
            f"{self.max_bytes / 1e9:g} GB of exports while it runs."
        )


@dataclass(frozen=True)
class Reply:
    """One column's answer to one turn, with the merge that produced it (merged column)."""

    update: ChatUpdate
    merge: LoadedMerge | None = None  # what the merged column ran on; None for the parents


@dataclass(frozen=True)
class Turn:
    """One prompt and its three replies. A blind (arena) turn shows its columns in a
    shuffled ``order`` under neutral names until the vote ``revealed`` them."""

    prompt: str
    replies: Mapping[str, Reply]
    order: tuple[str, ...] = COLUMNS  # the model each position on the page shows
    revealed: bool = True

    @property
    def blind(self) -> bool:
        return not self.revealed

    def column_at(self, position: int) -> str:
        return self.order[position]


def blind_order() -> tuple[str, ...]:
    """A fresh shuffle of the three columns for one blind turn (not guessable from the last)."""
    return tuple(random.SystemRandom().sample(COLUMNS, len(COLUMNS)))


def example_prompts() -> tuple[list[str], list[str]]:
    """One held-out problem per level of the synthetic benchmark: (prompts, short labels)."""
    problems = [make_problems(level, 1, seed=0)[0] for level in LEVELS]
    prompts = [problem.messages[0]["content"] for problem in problems]
    labels = [f"Level {problem.level}: {problem.question}" for problem in problems]
    return prompts, labels


def conversation_for(turns: Sequence[Turn], column: str, prompt: str) -> list[dict[str, str]]:
    """Column ``column``'s own history (its own past answers) followed by ``prompt``."""
    messages: list[dict[str, str]] = []
    for turn in turns:
        messages.append({"role": "user", "content": turn.prompt})
        messages.append({"role": "assistant", "content": turn.replies[column].update.text})
    messages.append({"role": "user", "content": prompt})
    return messages


def decoding_for(
    column: str,
    mode: str,
    max_new_tokens: int,
    temperature: float = 0.6,
    top_p: float = 0.95,
    top_k: int = 20,
) -> DecodingSettings:
    """Decoding settings of one column: the study's per-model defaults, greedy, or custom."""
    if mode not in SAMPLING_MODES:
        raise UserError(f"unknown sampling mode {mode!r}; choose from {SAMPLING_MODES}")
    if int(max_new_tokens) < 1:
        raise UserError(f"max new tokens must be at least 1, got {max_new_tokens}")
    settings = DecodingSettings.for_model(column, max_new_tokens=int(max_new_tokens))
    if mode == "greedy":
        return replace(settings, do_sample=False)
    if mode == "custom":
        if not (temperature > 0 and 0 < top_p <= 1 and int(top_k) >= 0):
            raise UserError("custom sampling needs temperature > 0, 0 < top-p ≤ 1, top-k ≥ 0")
        return replace(settings, temperature=temperature, top_p=top_p, top_k=int(top_k))
    return settings


@functools.cache
def _longest_token(tokenizer: Any) -> int:
    """Characters in the tokenizer's longest token (vocabulary and added tokens)."""
    return max(1, *(len(token) for token in tokenizer.get_vocab()))


class AllowedFolders:
    """Paths typed into the page must lie inside one of these folders (symlinks resolved)."""

    def __init__(self, folders: Sequence[str | Path]) -> None:
        self.folders = tuple(dict.fromkeys(Path(f).expanduser().resolve() for f in folders))

    def resolve(self, text: str, what: str) -> Path:
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"no {what} given")
        if "\0" in text:
            raise UserError(f"the {what} path contains a NUL byte")
        path = Path(text.strip()).expanduser()
        if not path.is_absolute():
            path = REPO / path
        path = path.resolve()
        if not any(path.is_relative_to(folder) for folder in self.folders):
            allowed = ", ".join(str(folder) for folder in self.folders)
            raise UserError(f"{what} {path} is outside the allowed folders ({allowed})")
        return path


class Dashboard:
    """The loaded pair: a spectrum model for the parents' columns and linear merges at any λ,
    a live merger (loaded on first need) for the other methods."""

    def __init__(
        self,
        direct: str | Path = DEFAULT_PAIR / "direct",
        thinking: str | Path = DEFAULT_PAIR / "thinking",
        base: str | Path | None = None,
        *,
        device: str = "auto",
        db: str | Path = DEFAULT_DB,
        allowed_folders: Sequence[str | Path] = (),
        trust_remote_code: bool = False,
        allow_pickle: bool = False,
        limits: ChatLimits = ChatLimits(),
        export_quota: ExportQuota = ExportQuota(),
        ray: str | None = None,
        ray_workers: int | None = None,
        history: bool | None = None,
        sweep_limits: SweepLimits = PAGE_SWEEP_LIMITS,
    ) -> None:
        self.sweep_limits = sweep_limits
        self.sources = {"direct": str(direct), "thinking": str(thinking)}
        # The embedded pair learned single prompts only: earlier turns in its context derail
        # every later answer, so its chat starts afresh at each message unless asked.
        embedded = Path(direct).resolve() == (DEFAULT_PAIR / "direct").resolve()
        self.history = (not embedded) if history is None else history
        self.base = None if base is None else str(base)
        self.device = resolve_device(device)
        self.db = working_db(Path(db).resolve())
        self.folders = AllowedFolders([ASSETS, EXPORTS, self.db.parent, *allowed_folders])
        self.trust_remote_code = trust_remote_code
        self.limits = limits
        self.export_quota = export_quota
        self._download_dir: Path | None = None  # made on the first download
        self._exported = (0, 0)  # exports and bytes granted so far (failed ones given back)
        self._export_count = threading.Lock()
        self.allow_pickle = allow_pickle
        # First, from headers alone: pickle refused by file name, configs and tensors
        # compared, before any model loader reads a weight file.
        pair = [open_checkpoint(p, allow_pickle=allow_pickle) for p in (direct, thinking)]
        validate_parents(*pair, open_checkpoint(base, allow_pickle=allow_pickle) if base else None)
        remote = dict(trust_remote_code=trust_remote_code)
        check_dashboard(direct, thinking, base, device=self.device)  # headers only: fail fast
        # Each model keeps its own chat template: Qwen3 thinking templates open <think> in
        # the generation prompt, which must not be forced on the direct model.
        self.tokenizers = {
            role: load_tokenizer(path, **remote) for role, path in self.sources.items()
        }
        self._remote = remote
        # One model serves the direct and thinking columns (λ = 0 and 1 are the parents
        # bit for bit) and every linear merge, a λ per request: no re-merge, no lock, two
        # weight copies. Other methods load the live merger on first use.
        self.spectrum: SpectrumModel | None = None
        self.parents: dict[str, Any] = {}
        try:
            self.spectrum = SpectrumModel.load(direct, thinking, device=self.device)
        except UserError as error:  # an architecture the spectrum model does not know
            log.warning("spectrum model unavailable (%s); serving plain parents", error)
            self.parents = {
                role: AutoModelForCausalLM.from_pretrained(path, dtype="auto", **remote)
                .to(self.device)
                .eval()
                for role, path in self.sources.items()
            }
        self._merger: LiveMerger | None = None
        self._merger_loading = threading.Lock()
        self._weights: dict | None = None  # the pair's weight-analysis figures, once computed
        self.pool = None  # page sweeps go to this Ray pool when the app was given --ray
        if ray is not None:
            from spectrum.eval.distributed import RayPool

            self.pool = RayPool(ray, workers=ray_workers)

    def history_note(self) -> str:
        """What the page says about conversation history."""
        if self.history:
            return "Each column sees its own earlier answers (multi-turn)."
        return (
            "History is off: this pair was trained on single prompts, so every message "
            "starts a new conversation (`--history` turns it on)."
        )

    def describe(self) -> str:
        """One start-up line: which pair, on what, writing where."""
        base = f", base {self.base}" if self.base else ""
        served = "spectrum model" if self.spectrum is not None else "plain parents"
        return (
            f"pair: direct {self.sources['direct']}, thinking {self.sources['thinking']}{base}; "
            f"device {self.device} ({served}); results and votes DB {self.db}"
        )

    @property
    def merger(self) -> LiveMerger:
        """The live merger, loaded the first time a method the spectrum model cannot serve
        is asked for (it holds the parents, a third model and prepared tensors)."""
        with self._merger_loading:
            if self._merger is None:
                self._merger = LiveMerger.load(
                    self.sources["direct"], self.sources["thinking"], self.base,
                    device=self.device, allow_pickle=self.allow_pickle, **self._remote,
                )  # fmt: skip
            return self._merger

    def served_by(self, spec: MergeSpec) -> str:
        """Which path answers a page's merged column: how the page says it."""
        if self.spectrum is not None and self.spectrum.serves(spec):
            return "spectrum model (one model for every λ, no re-merge)"
        return "live merger (re-merged in place)"

    def weight_figures(self) -> dict:
        """Weight-analysis figures of the loaded pair (computed on first use, then kept)."""
        if self._weights is None:
            self._weights = analyze_pair(self.sources["direct"], self.sources["thinking"])
        return self._weights

    def method_names(self) -> list[str]:
        """Registered methods this pair can run (those needing θ_B only with a base)."""
        return [name for name, method in REGISTRY.items() if self.base or not method.needs_base]

    def unavailable_methods(self) -> list[str]:
        """Registered methods this pair cannot run: they need a base model."""
        return [name for name in REGISTRY if name not in self.method_names()]

    @staticmethod
    def method(name: str) -> MergeMethod:
        """A method's summary and declared parameters (what the page builds widgets from)."""
        return get_method(name)

    @staticmethod
    def benchmark_names() -> list[str]:
        return list(BENCHMARKS)

    def results(self, db: str, run: str | None = None) -> Results:
        """The sweep results stored in the DB file the page names (of one run, if given)."""
        return load_results(self.folders.resolve(db, "results database"), run)

    def samples(
        self,
        db: str,
        benchmark: str,
        method: str,
        lam: float,
        *,
        decoding: str | None = None,
        run: str | None = None,
    ) -> pd.DataFrame:
        """The stored responses of one configuration; with ``decoding`` (or ``run``) only
        those of the configurations the explorer shows for it."""
        path = self.folders.resolve(db, "results database")
        if decoding is None and run is None:
            return sample_responses(path, benchmark, method, lam)
        table = self.results(db, run).only(decoding).table
        shown = table[
            (table["benchmark"] == benchmark) & (table["method"] == method) & (table["lam"] == lam)
        ]
        return sample_responses(
            path, benchmark, method, lam, config_ids=list(shown["config_id"]), run=run
        )

    def leaderboard(self, db: str) -> list[Standing]:
        """Win rate and Elo of every model that answered a vote stored in the DB file."""
        return leaderboard(self.folders.resolve(db, "results database"))

    @property
    def context_length(self) -> int:
        """Positions of the smallest of the three models (prompt + answer must fit)."""
        return min(self._context(column) or 2**31 for column in COLUMNS)

    def _context(self, column: str) -> int:
        """Positions of the model answering ``column`` (0: unknown)."""
        if self.spectrum is not None:
            config = self.spectrum.model.config
        else:  # the live merger's model is the direct parent's architecture
            config = self.parents["direct" if column == "merged" else column].config
        return int(getattr(config, "max_position_embeddings", 0) or 0)

    @property
    def num_layers(self) -> int:
        model = self.spectrum.model if self.spectrum is not None else self.parents["direct"]
        return int(model.config.num_hidden_layers)

    def check(self, spec: MergeSpec) -> MergeSpec:
        """``spec`` checked against the loaded pair, parameters resolved."""
        return spec.checked(has_base=self.base is not None, num_layers=self.num_layers)

    def set_merge(self, spec: MergeSpec) -> LoadedMerge:
        """Re-merge the live model to ``spec``; return the merge now in place."""
        spec = self.check(spec)
        if self.spectrum is not None and self.spectrum.serves(spec):
            return LoadedMerge(spec)  # nothing to re-merge: the spectrum model takes any λ
        return self.merger.set(spec)

    # Linked views: the chat's merge as a link, a command line, a merge file; a plot's point
    # as a merge (spectrum/dashboard/linked.py).
    def read_link(self, query: Mapping[str, str]) -> linked.SharedState:
        """The merge and prompt a shared link names, bad values left at their defaults."""
        return linked.read_query(query, self.check, self.method_names())

    def share_query(self, spec: MergeSpec, prompt: str = "") -> str:
        return linked.share_query(self.check(spec), prompt)

    def merge_command(self, spec: MergeSpec, out: str = "merged") -> str:
        """The ``spectrum merge`` line that writes ``spec`` of this pair (run from the
        repository root: paths inside it are shown relative to it)."""
        return linked.merge_command(self.check(spec), self._shown_sources(), out)

    def merge_yaml(self, spec: MergeSpec) -> str:
        """The ``spectrum merge --config`` file of ``spec`` of this pair."""
        return linked.merge_yaml(self.check(spec), self._shown_sources())

    def point_merge(self, point: str) -> MergeSpec:
        """The merge an explorer point carries, checked against this pair."""
        return self.check(linked.spec_from_point(point, self.method_names()))

    def _shown_sources(self) -> dict[str, str | None]:
        sources = {**self.sources, "base": self.base}
        return {role: _from_repo(path) for role, path in sources.items()}

    def chat(
        self,
        turns: Sequence[Turn],
        prompt: str,
        spec: MergeSpec,
        decoding: Mapping[str, DecodingSettings],
        stop: threading.Event | None = None,
    ) -> Iterator[dict[str, Reply | None]]:
        """Answer ``prompt`` in all three columns at once, yielding replies as they grow.

        Setting ``stop`` ends all three at their next token: the answers so far are the
        last snapshot, and the merged column's hold on the live model ends with them.
        """
        if not prompt.strip():
            raise UserError("type a prompt first")
        spec = self.check(spec)
        if not self.history:
            turns = ()  # each message is a conversation of its own (see ``history``)
        # Before any lock or generation: a refused request costs a length check, or at
        # most one tokenization per column.
        for column in COLUMNS:
            self._check_prompt_length(prompt, column, decoding[column], spec)
        for column in COLUMNS:
            conversation = conversation_for(turns, column, prompt)
            self.check_request(conversation, column, decoding[column], spec)
        max_time = self.limits.max_seconds

        def parent(column: str):
            def stream(stop: threading.Event) -> Iterator[Reply]:
                conversation = conversation_for(turns, column, prompt)
                if self.spectrum is not None:
                    endpoint = MergeSpec("linear", 0.0 if column == "direct" else 1.0).checked()
                    model = SpectrumRow(self.spectrum, endpoint)
                else:
                    model = self.parents[column]
                for update in stream_reply(
                    model,
                    self.tokenizers[column],
                    conversation,
                    decoding[column],
                    stop=stop,
                    max_time_s=max_time,
                ):
                    yield Reply(update)

            return stream

        def merged(stop: threading.Event) -> Iterator[Reply]:
            conversation = conversation_for(turns, "merged", prompt)
            if self.spectrum is not None and self.spectrum.serves(spec):
                row = SpectrumRow(self.spectrum, spec)
                tokenizer = self.template_tokenizer(spec)
                for update in stream_reply(
                    row, tokenizer, conversation, decoding["merged"], stop=stop, max_time_s=max_time
                ):
                    yield Reply(update, LoadedMerge(spec))
                return
            # Another page or a sweep may have re-merged since this one's slider moved:
            # set it again and generate on it in one hold, which no re-merge can split.
            with self.merger.holding(spec) as merge:
                for update in stream_reply(
                    self.merger.model,
                    self.template_tokenizer(spec),
                    conversation,
                    decoding["merged"],
                    stop=stop,
                    max_time_s=max_time,
                ):
                    yield Reply(update, merge)

        yield from stream_columns(
            {"direct": parent("direct"), "merged": merged, "thinking": parent("thinking")},
            stop=stop,
        )

    def template_tokenizer(self, spec: MergeSpec) -> Any:
        """The tokenizer, so the chat template, a merge's prompts are rendered with: the
        sweeps' rule (``spectrum.eval.sweep.template_role``). The direct parent (λ = 0 for
        every module kind) runs with its own; any other merge with that of the parent whose
        files its export carries (``MergeConfig.copy_from``: the thinking parent's). The
        parents share one vocabulary (``validate_parents``), so only the template differs."""
        direct = spec.lam == 0 and not any(lam for _, lam in spec.module_lams or ())
        return self.tokenizers["direct" if direct else MergeConfig.copy_from]

    def _column_tokenizer(self, column: str, spec: MergeSpec | None) -> Any:
        if column != "merged":
            return self.tokenizers[column]
        return self.tokenizers["direct"] if spec is None else self.template_tokenizer(spec)

    def check_request(
        self,
        conversation: list[dict[str, str]],
        column: str,
        settings: DecodingSettings,
        spec: MergeSpec | None = None,
    ) -> int:
        """Refuse a turn that cannot fit the model or the limits; return its prompt tokens
        (the merged column's with ``spec``'s template; without one, the direct parent's)."""
        self._check_max_new(settings)
        tokenizer = self._column_tokenizer(column, spec)
        tokens = prompt_ids(tokenizer, conversation, torch.device("cpu")).shape[1]
        self._check_fits(column, tokens, settings, "")
        return tokens

    def _check_max_new(self, settings: DecodingSettings) -> None:
        if settings.max_new_tokens > self.limits.max_new_tokens:
            raise UserError(
                f"max new tokens {settings.max_new_tokens} is above this dashboard's limit "
                f"of {self.limits.max_new_tokens}"
            )

    def _check_prompt_length(
        self, prompt: str, column: str, settings: DecodingSettings, spec: MergeSpec
    ) -> None:
        """Refuse without tokenizing a prompt too long for any tokenization: no token is
        longer than the tokenizer's longest, so the prompt has at least this many."""
        self._check_max_new(settings)
        tokenizer = self._column_tokenizer(column, spec)
        longest = _longest_token(tokenizer)
        self._check_fits(column, -(-len(prompt) // longest), settings, "at least ")

    def _check_fits(self, column: str, tokens: int, settings: DecodingSettings, bound: str) -> None:
        context = self._context(column)
        if context and tokens + settings.max_new_tokens > context:
            raise UserError(
                f"the {column} model's context is {context} tokens: this conversation takes "
                f"{bound}{tokens} and max new tokens asks for {settings.max_new_tokens} more; "
                "shorten the prompt, clear the chat or lower max new tokens"
            )

    def export(self, folder: str, spec: MergeSpec, *, overwrite: bool = False) -> Path:
        """Write ``spec``'s merge as a checkpoint folder (model card, merge_config.json)."""
        out = self.folders.resolve(folder, "export folder")
        if out.parent == EXPORTS.resolve():
            EXPORTS.mkdir(exist_ok=True)  # the project's own folder for exports (ignored by git)
        config = MergeConfig(
            direct=self.sources["direct"],
            thinking=self.sources["thinking"],
            base=self.base,
            spec=self.check(spec),
            device=str(self.device),
        )
        protected = {"results database": self.db}
        size = sum(path.stat().st_size for path in self._direct_checkpoint.weight_files())
        self._grant_export(size)
        try:
            return merge_checkpoints(
                config, out, force=overwrite, progress=False, protected=protected
            )
        except BaseException:
            self._grant_export(-size, count=-1)  # nothing was written: the quota is kept
            raise

    def archive(self, folder: str) -> Path:
        """A zip of an exported folder, for a visitor who cannot reach this machine's disk.

        Only a folder this tool wrote whole (its marker matches every file) is zipped; the
        zip is stored, not compressed (weights barely compress), written beside a previous
        one and renamed in, and the dashboard keeps one at a time."""
        folder = self.folders.resolve(folder, "export folder")
        check_complete_output(folder, f"{folder} is not offered for download: ")
        downloads = self._downloads()
        target = downloads / f"{folder.name}.zip"
        partial = downloads / f".{folder.name}.zip.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as archive:
                for path in sorted(folder.iterdir()):
                    archive.write(path, f"{folder.name}/{path.name}")
            for old in downloads.glob("*.zip"):
                old.unlink()
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return target

    def _downloads(self) -> Path:
        if self._download_dir is None:
            self._download_dir = Path(tempfile.mkdtemp(prefix="spectrum-downloads-"))
        return self._download_dir

    @functools.cached_property
    def _direct_checkpoint(self):
        return open_checkpoint(self.sources["direct"], allow_pickle=self.allow_pickle)

    def _grant_export(self, size: int, count: int = 1) -> None:
        """Count one export of ``size`` bytes against the quota, or refuse it with the
        numbers; under a lock, so two exports at once cannot both take the last place."""
        quota = self.export_quota
        with self._export_count:
            done, written = self._exported
            if count > 0 and (done + count > quota.max_exports or written + size > quota.max_bytes):
                raise UserError(
                    f"export quota reached: this dashboard has written {done} of its "
                    f"{quota.max_exports} exports and {written / 1e9:.3g} of its "
                    f"{quota.max_bytes / 1e9:g} GB; this export would add {size / 1e9:.3g} GB"
                )
            self._exported = (done + count, written + size)

    def vote(
        self, turns: Sequence[Turn], choice: str, decoding: Mapping[str, DecodingSettings]
    ) -> str:
        """Store a preference among the last turn's three answers in the dashboard's DB.
        ``choice`` names the model (a blind page maps its position to it first)."""
        if not turns:
            raise UserError("nothing to vote on yet: send a prompt first")
        turn = turns[-1]
        if not all(turn.replies[column].update.finished for column in COLUMNS):
            raise UserError("wait until all three answers are finished before voting")
        if any(turn.replies[column].update.stopped for column in COLUMNS):
            raise UserError("this turn was stopped: votes count only complete answers")
        earlier = turns[:-1] if self.history else ()  # what the merged column really saw
        merge = turn.replies["merged"].merge
        vote = Vote(
            choice=choice,
            prompt=turn.prompt,
            answers={column: turn.replies[column].update.text for column in COLUMNS},
            spec=merge.spec,
            direct_model=self.sources["direct"],
            thinking_model=self.sources["thinking"],
            base_model=self.base,
            history=conversation_for(earlier, "merged", turn.prompt)[:-1],
            decoding={column: settings.as_dict() for column, settings in decoding.items()},
            blind=turn.blind,
        )
        return record_vote(self.db, vote)

    def sweep_target(self, db: str) -> Path:
        """The results DB a page sweep may write (with its lock file beside it): inside the
        allowed folders, but never in the shipped ``assets/`` (the tracked DB, the embedded
        pair) nor inside a parent model's folder, which the sweep only reads."""
        path = self.folders.resolve(db, "results database")
        inside = [("the shipped assets folder", ASSETS.resolve())]
        inside += [(f"the {role} model's folder", folder) for role, folder in self._parents()]
        for what, folder in inside:
            if path.is_relative_to(folder):
                raise UserError(
                    f"results database {path} is inside {what} ({folder}), which a sweep "
                    f"never writes; sweep into {self.db.parent} or another allowed folder"
                )
        return path

    def _parents(self) -> list[tuple[str, Path]]:
        """(role, resolved folder) of each parent that is a local folder (not a hub id)."""
        sources = {**self.sources, "base": self.base}
        found = [(role, Path(src).expanduser()) for role, src in sources.items() if src]
        return [(role, path.resolve()) for role, path in found if path.is_dir()]

    def sweep(
        self,
        db: str,
        methods: Sequence[str],
        lams: str,
        benchmark: str,
        *,
        limit: int,
        k: int = 1,
        max_new_tokens: int = 256,
        report: Callable[[SweepProgress], None] | None = None,
        stop: threading.Event | None = None,
    ) -> SweepResult:
        """Evaluate ``methods`` × ``lams`` on the loaded pair into the results DB ``db``.

        It re-merges the shared live model, so chats in flight keep their truthful labels
        but a page's next merged answer re-applies that page's own merge first. ``report``
        hears of every stored batch; setting ``stop`` ends the sweep after the batch in
        flight, keeping what was stored (the next call resumes there).
        """
        path = self.sweep_target(db)
        if not methods:
            raise UserError("pick at least one method to sweep")
        for method in methods:
            self.check(MergeSpec(method, 0.0))
        limit, k = _whole(limit, "problems"), _whole(k, "samples per problem")
        max_new_tokens = _whole(max_new_tokens, "max new tokens")
        if not isinstance(lams, str):
            raise UserError("the λ grid must be text like 0:1:0.25")
        spec = SweepSpec(
            direct=self.sources["direct"],
            thinking=self.sources["thinking"],
            base=self.base,
            methods=tuple(methods),
            lams=parse_lams(lams, self.sweep_limits.grid),
            benchmarks=(benchmark,),
            k=k,
            limit=limit,
            decoding={"max_new_tokens": max_new_tokens},
            allow_pickle=self.allow_pickle,
        )
        return run_sweep(
            spec,
            path,
            provider_factory=lambda _: self.merger,
            command="spectrum app (sweep tab)",
            progress=False,  # the page draws its own bar from ``report``
            report=report,
            stop=stop,
            pool=self.pool,
            limits=self.sweep_limits,
        )


def _from_repo(path: str | None) -> str | None:
    """A path inside the repository relative to it (what a command run there names)."""
    if path is None or not Path(path).exists():
        return path
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(resolved)


def _whole(value: Any, what: str) -> int:
    """A page's number field as a whole number of at least 1 (one line if it is not)."""
    try:
        number = float(value)
        whole = int(number)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{what} must be a whole number, not {value!r}") from None
    if whole != number or whole < 1:
        raise UserError(f"{what} must be a whole number of at least 1, not {value!r}")
    return whole
