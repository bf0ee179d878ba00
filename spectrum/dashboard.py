"""What the dashboard does, without Gradio: the loaded pair, one chat turn on three models,
votes, export, and the folders the page may name.

The direct and thinking columns answer from the plain parents. The merged column answers
from the live merger's model *inside* ``merger.session()`` and is labelled with the merge
that session reports — never with what a slider shows — so a re-merge requested while it
streams (by this page or another) cannot mislabel it: ``set()`` waits for the session.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spectrum.chat import ChatUpdate, stream_columns, stream_reply
from spectrum.errors import UserError
from spectrum.eval.sweep import SweepResult, SweepSpec, parse_lams, run_sweep
from spectrum.explorer import analyze_pair
from spectrum.generate import DecodingSettings
from spectrum.live import LiveMerger
from spectrum.merge import MergeConfig, merge_checkpoints
from spectrum.methods import REGISTRY, get_method, resolve_params
from spectrum.selection import MergeScope
from spectrum.votes import COLUMNS, Vote, record_vote
from spectrum.weights.planner import check_dashboard

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "assets"
DEFAULT_PAIR = ASSETS / "pair"
SHIPPED_DB = ASSETS / "spectrum.duckdb"
# Votes and page-launched sweeps are written here, never into the tracked shipped file.
DEFAULT_DB = REPO / "results" / "spectrum.duckdb"
EXPORTS = REPO / "exports"
SAMPLING_MODES = ("per-model defaults", "greedy", "custom")


def working_db(db: Path) -> Path:
    """The default results DB starts as a copy of the shipped one (explorer shows its data)."""
    if db == DEFAULT_DB.resolve() and not db.exists() and SHIPPED_DB.exists():
        db.parent.mkdir(parents=True, exist_ok=True)
        partial = db.with_name(f".{db.name}.tmp-{os.getpid()}")
        shutil.copyfile(SHIPPED_DB, partial)
        os.replace(partial, db)  # atomic: a crash never leaves a half-copied DB
    return db


@dataclass(frozen=True)
class MergeRequest:
    """The merge one page asked for (its widgets), as opposed to the one loaded now."""

    method: str = "linear"
    lam: float = 0.5
    params: Mapping[str, Any] = field(default_factory=dict)
    layers: str | None = None
    modules: tuple[str, ...] | None = None
    seed: int = 0

    def matches(self, loaded: Any) -> bool:
        """True when ``loaded`` (a LoadedMerge, or None before any) is this request."""
        return (
            loaded is not None
            and loaded.method == self.method
            and loaded.lam == self.lam
            and dict(loaded.params) == dict(self.params)
            and (loaded.layers or None) == self.layers
            and (tuple(loaded.modules) if loaded.modules else None) == self.modules
            and loaded.seed == self.seed
        )


@dataclass(frozen=True)
class Reply:
    """One column's answer to one turn, with the merge that produced it (merged column)."""

    update: ChatUpdate
    merge: Any = None  # LoadedMerge for the merged column, None for the parents


@dataclass(frozen=True)
class Turn:
    prompt: str
    replies: Mapping[str, Reply]


def merge_label(merge: Any) -> str:
    """``linear · λ 0.60`` (+ scope when restricted): how a merged answer is labelled."""
    label = f"{merge.method} · λ {merge.lam:.2f}"
    if merge.layers:
        label += f" · layers {merge.layers}"
    if merge.modules:
        label += f" · {'+'.join(merge.modules)}"
    return label


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


class AllowedFolders:
    """Paths typed into the page must lie inside one of these folders (symlinks resolved)."""

    def __init__(self, folders: Sequence[str | Path]) -> None:
        self.folders = tuple(dict.fromkeys(Path(f).expanduser().resolve() for f in folders))

    def resolve(self, text: str, what: str) -> Path:
        if not text or not text.strip():
            raise UserError(f"no {what} given")
        path = Path(text.strip()).expanduser()
        if not path.is_absolute():
            path = REPO / path
        path = path.resolve()
        if not any(path.is_relative_to(folder) for folder in self.folders):
            allowed = ", ".join(str(folder) for folder in self.folders)
            raise UserError(f"{what} {path} is outside the allowed folders ({allowed})")
        return path


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class Dashboard:
    """The loaded pair: plain parents for two columns, a live merger for the third."""

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
    ) -> None:
        self.sources = {"direct": str(direct), "thinking": str(thinking)}
        self.base = None if base is None else str(base)
        self.device = pick_device(device)
        self.db = working_db(Path(db).resolve())
        self.folders = AllowedFolders([ASSETS, EXPORTS, self.db.parent, *allowed_folders])
        self.trust_remote_code = trust_remote_code
        remote = dict(trust_remote_code=trust_remote_code)
        check_dashboard(direct, thinking, base, device=self.device)  # headers only: fail fast
        # Each model keeps its own chat template: Qwen3 thinking templates open <think> in
        # the generation prompt, which must not be forced on the direct model.
        self.tokenizers = {
            role: AutoTokenizer.from_pretrained(path, **remote)
            for role, path in self.sources.items()
        }
        self.parents = {
            role: AutoModelForCausalLM.from_pretrained(path, dtype="auto", **remote)
            .to(self.device)
            .eval()
            for role, path in self.sources.items()
        }
        self.merger = LiveMerger.load(
            direct, thinking, base, device=self.device, trust_remote_code=trust_remote_code
        )
        self._weights: dict | None = None  # the pair's weight-analysis figures, once computed
        # One page's "set if not what I asked for, then generate" must not interleave with
        # another page's, or both would re-merge back and forth.
        self._claim = threading.Lock()

    def weight_figures(self) -> dict:
        """Weight-analysis figures of the loaded pair (computed on first use, then kept)."""
        if self._weights is None:
            self._weights = analyze_pair(self.sources["direct"], self.sources["thinking"])
        return self._weights

    def method_names(self) -> list[str]:
        """Registered methods this pair can run (those needing θ_B only with --base)."""
        return [name for name, method in REGISTRY.items() if self.base or not method.needs_base]

    @property
    def num_layers(self) -> int:
        return int(self.parents["direct"].config.num_hidden_layers)

    def check(self, request: MergeRequest) -> dict[str, Any]:
        """Validate a request (method, λ, parameters, scope); return resolved parameters."""
        method = get_method(request.method)
        if method.needs_base and self.base is None:
            raise UserError(f"method {method.name} needs a base model; launch with --base")
        if not 0.0 <= request.lam <= 1.0:
            raise UserError(f"λ={request.lam} is outside [0, 1] (0 = direct, 1 = thinking)")
        MergeScope(request.layers, request.modules).check_layers(self.num_layers)
        return resolve_params(method, request.params)

    def set_merge(self, request: MergeRequest) -> Any:
        """Re-merge the live model to ``request``; return the LoadedMerge now in place."""
        params = self.check(request)
        with self._claim:
            return self._set(request, params)

    def _set(self, request: MergeRequest, params: dict[str, Any]) -> Any:
        return self.merger.set(
            request.method,
            request.lam,
            params,
            layers=request.layers,
            modules=request.modules,
            seed=request.seed,
        )

    def chat(
        self,
        turns: Sequence[Turn],
        prompt: str,
        request: MergeRequest,
        decoding: Mapping[str, DecodingSettings],
    ) -> Iterator[dict[str, Reply | None]]:
        """Answer ``prompt`` in all three columns at once, yielding replies as they grow."""
        if not prompt.strip():
            raise UserError("type a prompt first")
        params = self.check(request)
        resolved = replace(request, params=params)

        def parent(column: str):
            def stream(stop: threading.Event) -> Iterator[Reply]:
                conversation = conversation_for(turns, column, prompt)
                model = self.parents[column]
                for update in stream_reply(
                    model, self.tokenizers[column], conversation, decoding[column], stop=stop
                ):
                    yield Reply(update)

            return stream

        def merged(stop: threading.Event) -> Iterator[Reply]:
            conversation = conversation_for(turns, "merged", prompt)
            with ExitStack() as held:
                with self._claim:
                    # Another page may have re-merged since this one's slider moved.
                    if not resolved.matches(self.merger.current):
                        self._set(resolved, params)
                    merge = held.enter_context(self.merger.session())
                for update in stream_reply(
                    self.merger.model,
                    # The merger's own (the direct parent's), as sweeps of the merge use.
                    self.merger.tokenizer,
                    conversation,
                    decoding["merged"],
                    stop=stop,
                ):
                    yield Reply(update, merge)

        yield from stream_columns(
            {"direct": parent("direct"), "merged": merged, "thinking": parent("thinking")}
        )

    def export(self, folder: str, request: MergeRequest, *, overwrite: bool = False) -> Path:
        """Write ``request``'s merge as a checkpoint folder (model card, merge_config.json)."""
        out = self.folders.resolve(folder, "export folder")
        params = self.check(request)
        config = MergeConfig(
            direct=self.sources["direct"],
            thinking=self.sources["thinking"],
            base=self.base,
            method=request.method,
            lam=request.lam,
            params=params,
            seed=request.seed,
            layers=request.layers,
            modules=request.modules,
            device=self.device,
        )
        return merge_checkpoints(config, out, force=overwrite, progress=False)

    def vote(
        self, turns: Sequence[Turn], choice: str, decoding: Mapping[str, DecodingSettings]
    ) -> str:
        """Store a preference among the last turn's three answers in the dashboard's DB."""
        if not turns:
            raise UserError("nothing to vote on yet: send a prompt first")
        turn = turns[-1]
        merge = turn.replies["merged"].merge
        vote = Vote(
            choice=choice,
            prompt=turn.prompt,
            answers={column: turn.replies[column].update.text for column in COLUMNS},
            method=merge.method,
            lam=merge.lam,
            params=dict(merge.params),
            layers=merge.layers,
            modules=merge.modules,
            seed=merge.seed,
            direct_model=self.sources["direct"],
            thinking_model=self.sources["thinking"],
            base_model=self.base,
            history=conversation_for(turns[:-1], "merged", turn.prompt)[:-1],
            decoding={column: settings.as_dict() for column, settings in decoding.items()},
        )
        return record_vote(self.db, vote)

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
    ) -> SweepResult:
        """Evaluate ``methods`` × ``lams`` on the loaded pair into the results DB ``db``.

        It re-merges the shared live model, so chats in flight keep their truthful labels
        but a page's next merged answer re-applies that page's own merge first.
        """
        path = self.folders.resolve(db, "results database")
        if not methods:
            raise UserError("pick at least one method to sweep")
        for method in methods:
            self.check(MergeRequest(method, 0.0))
        if int(limit) < 1 or int(k) < 1 or int(max_new_tokens) < 1:
            raise UserError("problems, samples and max new tokens must each be at least 1")
        spec = SweepSpec(
            direct=self.sources["direct"],
            thinking=self.sources["thinking"],
            base=self.base,
            methods=tuple(methods),
            lams=parse_lams(lams),
            benchmarks=(benchmark,),
            k=int(k),
            limit=int(limit),
            decoding={"max_new_tokens": int(max_new_tokens)},
        )
        return run_sweep(
            spec, path, provider_factory=lambda _: self.merger, command="spectrum app (sweep tab)"
        )
