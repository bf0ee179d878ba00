"""Weight analysis of a pair: how far apart, where, and how dense Δ = θ_T − θ_D is.

Streams over the checkpoints one tensor at a time (two passes: sums and the range of Δ
first, then histograms), so it runs on models larger than memory. The outputs are
(ThinkingSpectrum paper, Section 3):

* relative distance ‖Δ‖/‖θ_D‖ overall, per layer, per module kind and per tensor;
* a histogram of Δ;
* the "CDF of Δ²": sorting positions by |Δ| from the largest, the share of ‖Δ‖² held by
  the top fraction q of positions, beside the same curve for Δ drawn from the difference
  of two i.i.d. Gaussians (itself a Gaussian, so the curve is scale-free):
  share(q) = q + 2·t·φ(t) with t = Φ⁻¹(1 − q/2). A dense Δ follows that curve; a sparse
  Δ (a few large entries) rises far above it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from spectrum.errors import UserError
from spectrum.eval import store
from spectrum.merge.scope import layer_of, module_of

HIST_BINS = 121
HIST_SIGMAS = 6.0  # the Δ histogram spans ±6 RMS(Δ)
ENERGY_BINS = 4096
ENERGY_POINTS = 200


@dataclass
class WeightAnalysis:
    analysis_id: str
    hashes: tuple[str, str]  # content hashes of direct, thinking
    stats: pd.DataFrame  # scope, key, numel, delta_sq, direct_sq, rel_distance
    hist: pd.DataFrame  # bin_left, bin_right, count
    energy: pd.DataFrame  # fraction, share, reference


def gaussian_energy_share(fraction: float) -> float:
    """Share of E[X²] held by the top ``fraction`` of |X| for a Gaussian X."""
    if fraction <= 0:
        return 0.0
    if fraction >= 1:
        return 1.0
    t = NormalDist().inv_cdf(1 - fraction / 2)
    return fraction + 2 * t * math.exp(-t * t / 2) / math.sqrt(2 * math.pi)


def _pairs(direct, thinking):
    names = direct.names()
    missing = sorted(set(names) ^ set(thinking.names()))
    if missing:
        raise UserError(f"the two models differ in tensor names, e.g. {missing[0]}")
    for name in names:
        if direct.shape(name) != thinking.shape(name):
            raise UserError(
                f"tensor {name} is {direct.shape(name)} in direct but "
                f"{thinking.shape(name)} in thinking"
            )
    return names


def _delta(direct, thinking, name) -> tuple[torch.Tensor, torch.Tensor]:
    d = direct.get(name).to(torch.float32)
    return thinking.get(name).to(torch.float32) - d, d


def _group_rows(per_tensor: pd.DataFrame, scope: str, keys: pd.Series) -> pd.DataFrame:
    grouped = per_tensor.groupby(keys)[["numel", "delta_sq", "direct_sq"]].sum().reset_index()
    grouped.columns = ["key", "numel", "delta_sq", "direct_sq"]
    grouped.insert(0, "scope", scope)
    return grouped


def analyze(direct_path: str, thinking_path: str, *, progress: bool = True) -> WeightAnalysis:
    from spectrum.weights.checkpoint import open_checkpoint

    direct, thinking = open_checkpoint(direct_path), open_checkpoint(thinking_path)
    names = _pairs(direct, thinking)
    hashes = direct.content_hash(), thinking.content_hash()
    analysis_id = hashlib.sha256("\0".join(hashes).encode()).hexdigest()[:16]

    rows, max_abs = [], 0.0
    for name in tqdm(names, desc="analyze: sums", disable=not progress):
        delta, d = _delta(direct, thinking, name)
        max_abs = max(max_abs, float(delta.abs().max()) if delta.numel() else 0.0)
        rows.append(
            dict(
                key=name,
                numel=delta.numel(),
                delta_sq=float(delta.double().square().sum()),
                direct_sq=float(d.double().square().sum()),
            )
        )
    per_tensor = pd.DataFrame(rows)
    total = per_tensor[["numel", "delta_sq", "direct_sq"]].sum()
    rms = math.sqrt(total["delta_sq"] / total["numel"])
    span = HIST_SIGMAS * rms if rms > 0 else 1.0
    top = max_abs if max_abs > 0 else 1.0

    hist = torch.zeros(HIST_BINS, dtype=torch.float64)
    abs_count = torch.zeros(ENERGY_BINS, dtype=torch.float64)
    abs_energy = torch.zeros(ENERGY_BINS, dtype=torch.float64)
    for name in tqdm(names, desc="analyze: histograms", disable=not progress):
        delta = _delta(direct, thinking, name)[0].flatten()
        hist += torch.histc(delta.clamp(-span, span), HIST_BINS, -span, span).double()
        index = (delta.abs() / top * ENERGY_BINS).long().clamp(max=ENERGY_BINS - 1)
        abs_count.index_add_(0, index, torch.ones_like(delta, dtype=torch.float64))
        abs_energy.index_add_(0, index, delta.double().square())

    per_tensor.insert(0, "scope", "tensor")
    stats = pd.concat(
        [
            pd.DataFrame([dict(scope="overall", key="all", **total.to_dict())]),
            _group_rows(per_tensor, "layer", per_tensor["key"].map(_layer_key)),
            _group_rows(per_tensor, "module", per_tensor["key"].map(module_of).fillna("other")),
            per_tensor,
        ],
        ignore_index=True,
    )
    stats["rel_distance"] = np.sqrt(stats["delta_sq"]) / np.sqrt(stats["direct_sq"])
    edges = np.linspace(-span, span, HIST_BINS + 1)
    hist_frame = pd.DataFrame(dict(bin_left=edges[:-1], bin_right=edges[1:], count=hist.numpy()))
    return WeightAnalysis(
        analysis_id, hashes, stats, hist_frame, _energy_curve(abs_count, abs_energy)
    )


def _layer_key(name: str) -> str:
    layer = layer_of(name)
    return "outside layers" if layer is None else f"{layer:04d}"


def _energy_curve(abs_count: torch.Tensor, abs_energy: torch.Tensor) -> pd.DataFrame:
    """Cumulative (fraction of positions, share of ‖Δ‖²) from the largest |Δ| down, sampled
    at ENERGY_POINTS fractions (bins are split evenly inside, which is exact at bin edges)."""
    counts = abs_count.flip(0).numpy()
    energy = abs_energy.flip(0).numpy()
    cum_fraction = np.concatenate([[0.0], np.cumsum(counts)]) / max(counts.sum(), 1.0)
    cum_share = np.concatenate([[0.0], np.cumsum(energy)]) / max(energy.sum(), 1e-300)
    fractions = np.linspace(0.0, 1.0, ENERGY_POINTS + 1)
    share = np.interp(fractions, cum_fraction, cum_share)
    reference = [gaussian_energy_share(q) for q in fractions]
    return pd.DataFrame(dict(fraction=fractions, share=share, reference=reference))


def store_analysis(con, result: WeightAnalysis, direct: str, thinking: str) -> None:
    """Replace this pair's rows in the three weight tables in one transaction."""
    pair = dict(direct=direct, thinking=thinking)
    pair.update(direct_hash=result.hashes[0], thinking_hash=result.hashes[1])
    with store.transaction(con):
        for table, frame in (
            ("weight_stats", result.stats.assign(**pair)),
            ("weight_hist", result.hist),
            ("weight_energy", result.energy),
        ):
            con.execute(f"DELETE FROM {table} WHERE analysis_id = ?", [result.analysis_id])
            store.insert(con, table, frame.assign(analysis_id=result.analysis_id))
