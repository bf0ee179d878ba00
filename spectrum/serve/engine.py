"""Decoding many requests together, a row per choice, joining a running batch between steps.

A ``Row`` is one choice of one request: its prompt ids, decoding settings, seed, merge and
limits. An engine owns one worker thread and a queue of rows; the worker runs a *batch*:
every step it admits the queued rows the batch can take (prefilled one at a time, then
their KV cache joined to the batch's, left-padded so every row ends at the right edge),
feeds each running row's last token in one forward, draws each row's next token with the
row's own settings and random generator (``RowSampling``: a row's tokens do not depend on
its batch mates), and drops the rows that finished, were cancelled or ran out of time.

``SpectrumEngine`` runs every row on the ``SpectrumModel``, each at its own merge, so a
request never waits for a batch of another λ to end. ``MergerEngine`` serves the methods
the spectrum model cannot: it merges the live model to the oldest queued row's spec, runs
a batch of the rows of that merge (others queue on), then moves to the next merge.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache

from spectrum.errors import UserError
from spectrum.generate.batch import DecodingSettings
from spectrum.live.spectrum_generate import RowSampling
from spectrum.merge.spec import MergeSpec

log = logging.getLogger("spectrum.serve")


@dataclass(frozen=True)
class Delta:
    """New text of one choice; ``finish`` ("stop" or "length") on its last delta."""

    index: int
    text: str
    n_tokens: int
    finish: str | None = None


@dataclass(eq=False)
class Row:
    """One choice being generated. ``notify`` receives its deltas (from the worker thread)."""

    prompt: list[int]
    settings: DecodingSettings
    seed: int
    spec: MergeSpec
    stops: tuple[str, ...]
    deadline: float  # time.monotonic() after which the row ends ("length")
    notify: Callable[[Delta], None]
    index: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)
    ids: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0  # characters of ``text`` already sent
    done: bool = False

    def __post_init__(self) -> None:
        self.sampler = RowSampling([self.settings], [self.seed])


class Engine:
    """A worker thread and a queue of rows; subclasses say how a batch runs."""

    def __init__(self, tokenizer: Any, *, max_batch: int, context: int, name: str) -> None:
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.max_batch = max_batch
        self.context = context
        self._queue: deque[Row] = deque()
        self._wake = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, rows: Sequence[Row]) -> None:
        with self._wake:
            if self._closing:
                raise UserError("the server is shutting down")
            self._queue.extend(rows)
            self._wake.notify()

    def queued(self) -> int:
        return len(self._queue)

    def close(self, timeout: float | None = None) -> None:
        """Take no new rows; the worker finishes the queued and running ones, then exits."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._closing:
                    self._wake.wait()
                if not self._queue:
                    return
            try:
                self._serve()
            except Exception:  # its rows were told; the server goes on with the next batch
                log.exception("batch failed")

    def _serve(self) -> None:
        raise NotImplementedError

    def _take(self, accept: Callable[[Row], bool], room: int) -> list[Row]:
        with self._wake:
            taken = [row for row in self._queue if accept(row)][:room]
            for row in taken:
                self._queue.remove(row)
        return taken

    def _fail(self, row: Row, error: BaseException) -> None:
        if not row.done:
            row.done = True
            row.notify(Delta(row.index, f"[generation failed: {error}]", len(row.ids), "error"))

    @torch.inference_mode()
    def _decode(self, forward: Callable[..., Any], accept: Callable[[Row], bool]) -> None:
        """Run one batch until no row is left: admit, step, drop; ``forward(ids, rows,
        **kwargs)`` is the model call for the given rows."""
        batch, joining = _Batch(), []
        try:
            while True:
                joining = self._take(accept, self.max_batch - len(batch.rows))
                while joining:
                    cache = self._prefill(forward, joining[0])
                    if cache is not None:
                        batch.join(joining[0], cache)
                    joining.pop(0)
                batch.drop([row for row in batch.rows if row.done or row.cancelled.is_set()])
                if not batch.rows:
                    return
                logits = batch.step(forward)
                for row, scores in zip(batch.rows, logits, strict=True):
                    self._advance(row, scores)
        except BaseException as error:
            for row in [*batch.rows, *joining]:
                self._fail(row, error)
            raise

    def _prefill(self, forward: Callable[..., Any], row: Row) -> DynamicCache | None:
        """The row's prompt through the model alone; its first token drawn. Returns its
        cache, or None when the row already ended."""
        if row.cancelled.is_set():
            return None
        ids = torch.tensor([row.prompt], device=self.device)
        cache = DynamicCache()
        out = forward(ids, [row], past_key_values=cache, use_cache=True, logits_to_keep=1)
        self._advance(row, out.logits[0, -1])
        return None if row.done else cache

    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    def _advance(self, row: Row, scores: Tensor) -> None:
        """Draw the row's next token from its scores and send the text it adds."""
        scores = row.sampler(None, scores.float().unsqueeze(0))
        token = int(scores[0].argmax())
        row.ids.append(token)
        finish = None
        if token == self.eos_id:
            finish = "stop"
        else:
            row.text = self.tokenizer.decode(
                [t for t in row.ids if t != self.eos_id], skip_special_tokens=True
            )
            cut = _first_stop(row.text, row.stops, row.sent)
            if cut is not None:
                row.text, finish = row.text[:cut], "stop"
        if finish is None and (
            len(row.ids) >= row.settings.max_new_tokens
            or len(row.prompt) + len(row.ids) >= self.context
            or time.monotonic() >= row.deadline
        ):
            finish = "length"
        # Hold back what may begin a stop string, and a half-decoded character.
        end = len(row.text) if finish else _safe_end(row.text, row.stops)
        if end > row.sent or finish:
            row.notify(Delta(row.index, row.text[row.sent : end], len(row.ids), finish))
            row.sent = end
        row.done = finish is not None


def _first_stop(text: str, stops: tuple[str, ...], start: int) -> int | None:
    """Where the first stop string begins in ``text`` (searching from near ``start``)."""
    found = [i for stop in stops if (i := text.find(stop, max(0, start - len(stop)))) >= 0]
    return min(found) if found else None


def _safe_end(text: str, stops: tuple[str, ...]) -> int:
    end = len(text)
    if text.endswith("\ufffd"):  # a multi-byte character not yet complete
        end -= 1
    for stop in stops:
        for size in range(min(len(stop) - 1, end), 0, -1):
            if stop.startswith(text[end - size : end]):
                return end - size
    return end


class _Batch:
    """The running rows and their shared KV cache, each row right-aligned (left padding)."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.cache: DynamicCache | None = None
        self.lengths: list[int] = []  # real tokens of each row in the cache

    @property
    def width(self) -> int:
        return 0 if self.cache is None else self.cache.get_seq_length()

    def join(self, row: Row, cache: DynamicCache) -> None:
        length = cache.get_seq_length()
        if self.cache is None:
            self.cache, self.rows, self.lengths = cache, [row], [length]
            return
        width = max(self.width, length)
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, width), _left_pad(theirs.keys, width)])
            mine.values = torch.cat(
                [_left_pad(mine.values, width), _left_pad(theirs.values, width)]
            )
        self.rows.append(row)
        self.lengths.append(length)

    def drop(self, leaving: list[Row]) -> None:
        if not leaving:
            return
        keep = [i for i, row in enumerate(self.rows) if row not in leaving]
        self.rows = [self.rows[i] for i in keep]
        self.lengths = [self.lengths[i] for i in keep]
        if not keep:
            self.cache = None
            return
        # Columns that are padding in every remaining row are dropped with the rows.
        trim = self.width - max(self.lengths)
        index = torch.tensor(keep, device=self.cache.layers[0].keys.device)
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, trim:]
            layer.values = layer.values.index_select(0, index)[:, :, trim:]

    def step(self, forward: Callable[..., Any]) -> Tensor:
        """One forward of every row's last token; the next-token scores, one row each."""
        device = self.cache.layers[0].keys.device
        ids = torch.tensor([[row.ids[-1]] for row in self.rows], device=device)
        width = self.width + 1
        mask = torch.zeros(len(self.rows), width, dtype=torch.long, device=device)
        for i, length in enumerate(self.lengths):
            mask[i, width - length - 1 :] = 1
        positions = torch.tensor([[length] for length in self.lengths], device=device)
        out = forward(
            ids, self.rows, past_key_values=self.cache, use_cache=True,
            attention_mask=mask, position_ids=positions,
        )  # fmt: skip
        self.lengths = [length + 1 for length in self.lengths]
        return out.logits[:, -1]


def _left_pad(tensor: Tensor, width: int) -> Tensor:
    """(batch, heads, length, dim) zero-padded on the left to ``width`` positions."""
    missing = width - tensor.shape[2]
    if missing == 0:
        return tensor
    pad = tensor.new_zeros(*tensor.shape[:2], missing, tensor.shape[3])
    return torch.cat([pad, tensor], dim=2)


class SpectrumEngine(Engine):
    """Every row on one ``SpectrumModel``, each row at its own merge: any mix of λ (and λ
    per module kind) in one batch, rows joining it between steps."""

    def __init__(self, spectrum: Any, *, max_batch: int, context: int) -> None:
        self.spectrum = spectrum
        # A served batch is several rows against E₀ and E₁: oneDNN's kernel on CPU (see
        # spectrum_modules._linear); answers equal the merged models' to float rounding.
        spectrum.onednn = True
        super().__init__(spectrum.tokenizer, max_batch=max_batch, context=context,
                         name="serve-spectrum")  # fmt: skip

    @property
    def device(self) -> torch.device:
        return self.spectrum.device

    def _serve(self) -> None:
        # The strengths table changes only when rows join or leave: computed once for each
        # composition (the rows themselves are the key: compared by identity, kept alive).
        table: dict[tuple[Row, ...], Tensor] = {}

        def forward(ids: Tensor, rows: list[Row], **kwargs: Any) -> Any:
            key = tuple(rows)
            if key not in table:
                table.clear()
                table[key] = self.spectrum.strengths([row.spec for row in rows])
            return self.spectrum.forward(ids, table[key], **kwargs)

        self._decode(forward, lambda row: True)


class MergerEngine(Engine):
    """Rows of the methods the spectrum model cannot run, on the live merger: one merge at
    a time, the rows asking for it batched together."""

    def __init__(
        self,
        merger: Callable[[], Any],
        tokenizer: Any,
        *,
        max_batch: int,
        context: int,
    ) -> None:
        # ``merger`` loads the live merger on first use (it costs a third model's memory).
        self._merger = merger
        self._device: torch.device | None = None
        super().__init__(tokenizer, max_batch=max_batch, context=context, name="serve-merger")

    @property
    def device(self) -> torch.device:
        return self._device

    def _serve(self) -> None:
        with self._wake:
            spec = self._queue[0].spec
        try:
            merger = self._merger()
            self._device = merger.model.device
            if merger.current.spec != spec:  # this thread alone sets the server's merger
                merger.set(spec)
        except Exception as error:  # the rows of this merge fail; other merges go on
            for row in self._take(lambda row: row.spec == spec, len(self._queue)):
                self._fail(row, error)
            raise

        def forward(ids: Tensor, rows: list[Row], **kwargs: Any) -> Any:
            return merger.model(input_ids=ids, **kwargs)

        with merger.session():
            self._decode(forward, lambda row: row.spec == spec)
