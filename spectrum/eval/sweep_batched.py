"""A sweep's affine methods on one spectrum model: every λ of the grid in one batch.

For linear, task_arithmetic, dare, twin and lore (transformers backend) the sweep does
not re-merge per λ: a ``SpectrumModel`` holds E₀ and E₁ once per method, and each batch
decodes ``batch_size`` (problem, sample) units at *every* λ still missing for them. Rows
keep their configuration's decoding settings (λ = 0 samples as the direct parent).

Greedy rows are the per-λ sweep's rows (the spectrum model gives the merged models'
logits to float32 rounding; tests/test_sweep_batched.py checks the DB rows). Sampling
cannot reproduce the per-λ path's rows: that path seeds the global generator once per
batch (``seed + offset``) and transformers draws all rows of a batch from that one
stream, so a row's sample depends on which rows shared its batch — and a batch here
holds every λ. Instead each row samples from its own generator seeded by
(sweep seed, config id, benchmark, problem, sample): a unit's sample is the same however
the sweep is batched, ordered or resumed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from spectrum.eval import store
from spectrum.eval.benchmarks import Problem, get_benchmark
from spectrum.eval.sweep import chat_template
from spectrum.generate.batch import DecodingSettings, chat_prompts
from spectrum.live.spectrum_generate import SpectrumGenerator, unit_seed
from spectrum.live.spectrum_model import AFFINE_METHODS, SpectrumModel
from spectrum.merge.scope import MergeScope

log = logging.getLogger(__name__)

# (config, benchmark, missing (problem, sample_idx)): one entry of the sweep's plan.
Entry = tuple[dict[str, Any], str, list[tuple[Problem, int]]]


def one_batch_pays(grid: Sequence[float]) -> bool:
    """Whether a sweep of this λ grid runs its affine methods as one batch: when one λ is
    a real merge, inside (0, 1). A grid of the endpoints alone ({0, 1}: every row a
    parent, one product per layer in a merged model and two in the batch, no re-merge to
    save) ran 0.76–0.94× the per-λ sweep on the embedded pair, 11 λ 1.5–2.3×
    (bench/RESULTS.md, issue 25). Decided from the configured grid, not the λ still
    missing, so a resumed sweep of the same grid takes the path (and the sampled rows'
    seeding) its first sitting took."""
    return any(0.0 < lam < 1.0 for lam in grid)


def split_batched(
    todo: list[Entry], grid: Sequence[float]
) -> tuple[dict[tuple[str, str], list[Entry]], list[Entry]]:
    """The plan's affine entries grouped by (method, benchmark), and the others (all of
    them when the grid is too small for the one batch to pay: ``one_batch_pays``)."""
    if not one_batch_pays(grid):
        log.info("λ grid %s holds only the parents: each λ re-merged in turn, not one batch",
                 sorted(set(grid)))  # fmt: skip
        return {}, list(todo)
    log.info("λ grid of %d values: affine methods decoded in one batch", len(set(grid)))
    batched: dict[tuple[str, str], list[Entry]] = {}
    rest = []
    for entry in todo:
        config, bench, _ = entry
        # λ per module kind is one more axis the spectrum model's strengths do not carry.
        if config["method"] in AFFINE_METHODS and "module_lams" not in config:
            batched.setdefault((config["method"], bench), []).append(entry)
        else:
            rest.append(entry)
    return batched, rest


def load_spectrum(spec: Any, config: dict[str, Any]) -> SpectrumModel:
    spectrum = SpectrumModel.load(
        spec.direct,
        spec.thinking,
        spec.base,
        method=config["method"],
        params=config["params"],
        seed=spec.seed,
        scope=MergeScope(spec.layers, spec.modules),
    )
    # Batches of batch_size × grid rows against E₀ and E₁: oneDNN's kernel on CPU
    # (spectrum_modules._linear); greedy rows stay the per-λ sweep's.
    spectrum.onednn = True
    return spectrum


class LamBatches:
    """Runs grouped entries; keeps one spectrum model, that of the method last run."""

    def __init__(self, sweeper: Any, make_rows: Callable[..., pd.DataFrame]):
        self.sweeper = sweeper
        self.make_rows = make_rows  # sweep._rows: the per-λ path's row builder
        self._method: str | None = None
        self._generator: SpectrumGenerator | None = None

    def run(self, entries: list[Entry], bar: Any) -> None:
        config, bench, _ = entries[0]
        generator = self._generator_for(config)
        spec = self.sweeper.spec
        # Units in plan order; each with every configuration that still misses it.
        units: dict[tuple[str, int], list[tuple[Problem, int, dict]]] = {}
        for entry_config, _, missing in entries:
            for problem, sample_idx in missing:
                units.setdefault((problem.id, sample_idx), []).append(
                    (problem, sample_idx, entry_config)
                )
        keys = list(units)
        for start in range(0, len(keys), spec.batch_size):
            rows = [row for key in keys[start : start + spec.batch_size] for row in units[key]]
            generator.batch_size = len(rows)  # the whole λ grid of these units in one batch
            gens = generator.generate_rows(*self._inputs(rows, bench, generator))
            frame = pd.concat(self._frames(rows, gens, bench), ignore_index=True)
            self.sweeper.store_rows(frame)  # judged first where the benchmark needs it
            bar.update(len(rows))

    def _inputs(self, rows, bench: str, generator: SpectrumGenerator) -> tuple[list, ...]:
        seed = self.sweeper.spec.seed
        spec = self.sweeper.spec
        # Each row with the template its configuration runs with (λ = 0: the direct one).
        prompts = [
            chat_prompts(generator.tokenizer, [problem.conversation()], None,
                         chat_template(spec, config))[0]
            for problem, _, config in rows
        ]  # fmt: skip
        lams = [config["lam"] for _, _, config in rows]
        settings = [DecodingSettings(**config["decoding"]) for _, _, config in rows]
        seeds = [
            unit_seed(seed, store.config_id(config), bench, problem.id, sample_idx)
            for problem, sample_idx, config in rows
        ]
        return prompts, lams, settings, seeds

    def _frames(self, rows, gens, bench: str) -> list[pd.DataFrame]:
        """The per-λ path's rows, one frame per configuration in the batch."""
        grader = get_benchmark(bench).grader
        by_config: dict[str, tuple[dict, list, list]] = {}
        for (problem, sample_idx, config), gen in zip(rows, gens, strict=True):
            cid = store.config_id(config)
            _, work, done = by_config.setdefault(cid, (config, [], []))
            work.append((problem, sample_idx))
            done.append(gen)
        run_id = self.sweeper.run_id
        return [
            self.make_rows(config, cid, run_id, bench, grader, work, done)
            for cid, (config, work, done) in by_config.items()
        ]

    def _generator_for(self, config: dict[str, Any]) -> SpectrumGenerator:
        if self._method != config["method"]:
            self._generator = None  # the previous method's model goes before the next loads
            spectrum = load_spectrum(self.sweeper.spec, config)
            self._generator = SpectrumGenerator(spectrum)
            self._method = config["method"]
        return self._generator
