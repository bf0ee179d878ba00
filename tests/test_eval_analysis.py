"""Weight analysis against sums computed directly from the checkpoints' tensors."""

from __future__ import annotations

import json
import math

import duckdb
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from spectrum.cli import main
from spectrum.eval.analysis import analyze, gaussian_energy_share


def _state(path):
    state = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(file))
    return {name: tensor.double() for name, tensor in state.items()}


def test_relative_distances_match_direct_sums(tiny_pair):
    direct, thinking = _state(tiny_pair["direct"]), _state(tiny_pair["thinking"])
    result = analyze(str(tiny_pair["direct"]), str(tiny_pair["thinking"]), progress=False)
    stats = result.stats.set_index(["scope", "key"])

    def rel(names):
        delta = sum(float((thinking[n] - direct[n]).square().sum()) for n in names)
        return math.sqrt(delta) / math.sqrt(sum(float(direct[n].square().sum()) for n in names))

    assert stats.loc[("overall", "all"), "rel_distance"] == pytest.approx(rel(list(direct)))
    layer1 = [n for n in direct if n.startswith("model.layers.1.")]
    assert stats.loc[("layer", "0001"), "rel_distance"] == pytest.approx(rel(layer1))
    attn = [n for n in direct if ".self_attn." in n and "norm" not in n]
    assert stats.loc[("module", "attn"), "rel_distance"] == pytest.approx(rel(attn), rel=1e-6)
    name = "model.layers.2.mlp.down_proj.weight"
    assert stats.loc[("tensor", name), "rel_distance"] == pytest.approx(rel([name]))
    assert result.hist["count"].sum() == sum(t.numel() for t in direct.values())

    # The energy curve against an exact sort of every |Δ|.
    delta = torch.cat([(thinking[n] - direct[n]).flatten() for n in direct]).abs()
    energy = delta.square().sort(descending=True).values.cumsum(0) / delta.square().sum()
    curve = result.energy.set_index("fraction")["share"]
    for fraction in (0.01, 0.1, 0.5):
        exact = float(energy[int(fraction * delta.numel()) - 1])
        assert curve.loc[fraction] == pytest.approx(exact, abs=0.01)


def test_gaussian_reference_curve():
    # t = 1: q = P(|X| > 1) = 0.3173; share = q + 2·φ(1) = 0.3173 + 0.4839.
    assert gaussian_energy_share(0.31731050786291415) == pytest.approx(0.80125195, abs=1e-6)
    assert gaussian_energy_share(0.0) == 0.0 and gaussian_energy_share(1.0) == 1.0


def test_dense_gaussian_delta_follows_reference_and_is_stored(tmp_path):
    generator = torch.Generator().manual_seed(0)
    base = {"model.layers.0.mlp.up_proj.weight": torch.randn(256, 256, generator=generator)}
    for role, noise in (("direct", 0.0), ("thinking", 0.01)):
        folder = tmp_path / role
        folder.mkdir()
        state = {k: v + noise * torch.randn(v.shape, generator=generator) for k, v in base.items()}
        save_file(state, folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps({"num_hidden_layers": 1}))
    db = tmp_path / "weights.duckdb"
    assert main(["analyze", "--direct", str(tmp_path / "direct"), "--thinking",
                 str(tmp_path / "thinking"), "--db", str(db), "--no-progress"]) == 0  # fmt: skip
    con = duckdb.connect(str(db), read_only=True)
    energy = con.execute("SELECT fraction, share, reference FROM weight_energy").df()
    overall = con.execute(
        "SELECT rel_distance FROM weight_stats WHERE scope = 'overall'"
    ).fetchone()[0]
    con.close()
    assert np.abs(energy["share"] - energy["reference"]).max() < 0.02
    assert overall == pytest.approx(0.01, rel=0.02)  # ‖0.01·noise‖ / ‖θ_D‖
