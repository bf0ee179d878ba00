"""The researcher's conventions: zero-sign rules of EMR and TIES, λ per module kind, and
the interpolation study's three stages, each against values computed independently."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from spectrum.cli import main
from spectrum.errors import UserError
from spectrum.eval.results import stages
from spectrum.live import LiveMerger
from spectrum.merge import MergeSpec, merge_tensors
from spectrum.merge.spec import parse_lam_text

# ------------------------------------------------ EMR / TIES where the elected sign is zero


def hand_model(direct, thinking):
    """One-tensor model with θ_B = 0, so τ_D = θ_D and τ_T = θ_T."""
    as32 = lambda values: {"w": torch.tensor(values, dtype=torch.float32)}  # noqa: E731
    return as32(direct), as32(thinking), as32([0.0] * len(direct))


def test_emr_zero_sum_by_hand():
    # Sums: 0, 0, 4. Hand-computed from docs/METHODS.md:
    # reference: flag (−1, −1, +1), τ_uni (−1, −2, 3), M_D (0,1,1), M_T (1,0,1),
    #   γ_D = (6/3)/(5/3) = 1.2, γ_T = (4/3)/(4/3) = 1 → θ(½) = (−0.5, −1.2, 3.3);
    # paper: flag (0, 0, +1), only position 2 survives, γ_D = 2, γ_T = 4/3 → (0, 0, 5).
    direct, thinking, base = hand_model([1.0, -2.0, 3.0], [-1.0, 2.0, 1.0])
    expected = {"reference": [-0.5, -1.2, 3.3], "paper": [0.0, 0.0, 5.0]}
    for rule, values in expected.items():
        merged = merge_tensors(
            direct, thinking, base, method="emr", lam=0.5, params={"sign_rule": rule}
        )
        np.testing.assert_allclose(merged["w"].numpy(), values, atol=1e-6)


def test_ties_zero_sum_by_hand():
    direct, thinking, base = hand_model([1.0, -2.0, 0.5], [-1.0, 2.0, 0.5])
    for tie_break, values in (("zero", [0.0, 0.0, 0.5]), ("plus", [1.0, 2.0, 0.5])):
        params = {"density": 1.0, "tie_break": tie_break}
        merged = merge_tensors(direct, thinking, base, method="ties", lam=0.5, params=params)
        np.testing.assert_array_equal(merged["w"].numpy(), np.float32(values))
    # λ = 0: the thinking parent has weight 0 and never agrees, even with an elected +.
    direct, thinking, base = hand_model([0.0, -2.0, 0.5], [3.0, 2.0, 0.5])
    params = {"density": 1.0, "tie_break": "plus"}
    merged = merge_tensors(direct, thinking, base, method="ties", lam=0.0, params=params)
    np.testing.assert_array_equal(merged["w"].numpy(), np.float32([0.0, -2.0, 0.5]))


def bf16_model_with_cancelling_task_vectors(seed: int = 0):
    """bf16 parents where τ_T = −τ_D exactly at a third of the positions, as bf16 rounding
    makes common in real pairs."""
    generator = torch.Generator().manual_seed(seed)
    shape = (64, 48)
    base = torch.randn(shape, generator=generator).to(torch.bfloat16)
    tau_direct = (torch.randn(shape, generator=generator) * 0.05).to(torch.bfloat16)
    tau_thinking = (torch.randn(shape, generator=generator) * 0.05).to(torch.bfloat16)
    cancel = torch.rand(shape, generator=generator) < 1 / 3
    tau_thinking = torch.where(cancel, -tau_direct, tau_thinking)
    # Store θ = θ_B + τ in float32 so the task vectors come back exactly after widening.
    model = {
        "direct": {"w": base.float() + tau_direct.float()},
        "thinking": {"w": base.float() + tau_thinking.float()},
        "base": {"w": base.float()},
    }
    return model, cancel.numpy()


def emr_numpy(d, t, b, lam, rule):
    """EMR from docs/METHODS.md in float64 numpy, written apart from the method's code."""
    tau_d, tau_t = d - b, t - b
    total = tau_d + tau_t
    flag = np.where(total > 0, 1.0, -1.0) if rule == "reference" else np.sign(total)
    mask_d, mask_t = tau_d * flag > 0, tau_t * flag > 0
    unified = flag * np.maximum(np.abs(tau_d) * mask_d, np.abs(tau_t) * mask_t)
    gamma_d = np.abs(tau_d).mean() / np.abs(mask_d * unified).mean()
    gamma_t = np.abs(tau_t).mean() / np.abs(mask_t * unified).mean()
    return b + (1 - lam) * gamma_d * mask_d * unified + lam * gamma_t * mask_t * unified


@pytest.mark.parametrize("rule", ["reference", "paper"])
@pytest.mark.parametrize("lam", [0.3, 0.7])
def test_emr_bf16_cancelling_positions_match_the_formula(rule, lam):
    model, cancel = bf16_model_with_cancelling_task_vectors()
    d, t, b = (model[role]["w"].double().numpy() for role in ("direct", "thinking", "base"))
    merged = merge_tensors(
        model["direct"], model["thinking"], model["base"],
        method="emr", lam=lam, params={"sign_rule": rule},
    )["w"].numpy()  # fmt: skip
    expected = emr_numpy(d, t, b, lam, rule)
    np.testing.assert_allclose(merged, expected, atol=2e-6)
    at_cancel = merged[cancel] - b[cancel]
    if rule == "paper":
        assert np.all(at_cancel == 0)  # both masks empty: θ_B kept
    else:
        assert np.count_nonzero(at_cancel) > 0.9 * cancel.sum()  # the negative one survives


def ties_numpy(d, t, b, lam, tie_break):
    """TIES with density 1 (no trim) from docs/METHODS.md, weights (1−λ, λ)."""
    tau = np.stack([d - b, t - b])
    weights = np.array([1 - lam, lam])[:, None, None]
    combined = (weights * tau).sum(0)
    elected = np.sign(combined)
    if tie_break == "plus":
        elected = np.where(combined == 0, 1.0, elected)
    agrees = (np.sign(tau) == elected) & (weights > 0)
    numerator = (weights * tau * agrees).sum(0)
    denominator = (weights * agrees).sum(0)
    return b + np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), 0)


@pytest.mark.parametrize("tie_break", ["zero", "plus"])
def test_ties_bf16_cancelling_positions_match_the_formula(tie_break):
    model, cancel = bf16_model_with_cancelling_task_vectors(1)
    d, t, b = (model[role]["w"].double().numpy() for role in ("direct", "thinking", "base"))
    merged = merge_tensors(
        model["direct"], model["thinking"], model["base"],
        method="ties", lam=0.5, params={"density": 1.0, "tie_break": tie_break},
    )["w"].numpy()  # fmt: skip
    np.testing.assert_allclose(merged, ties_numpy(d, t, b, 0.5, tie_break), atol=1e-6)
    moved = np.count_nonzero(merged[cancel] - b[cancel])
    assert (moved == 0) if tie_break == "zero" else (moved > 0.4 * cancel.sum())


# ------------------------------------------------------------------ λ per module kind


def kind_of(name: str) -> str:
    """Module kind by the rule of docs/METHODS.md, written apart from the code's."""
    if name.split(".")[-2].endswith("norm"):
        return "norm"
    for marker, kind in ((".mlp.", "mlp"), (".self_attn.", "attn"), ("embed_tokens", "embed")):
        if marker in name:
            return kind
    return "lm_head"


def read_parent(folder) -> dict[str, torch.Tensor]:
    tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def test_lam_per_module_kind_is_the_formula_per_tensor(tiny_pair):
    direct, thinking = read_parent(tiny_pair["direct"]), read_parent(tiny_pair["thinking"])
    lams = {"attn": 0.8, "mlp": 0.2, "embed": 0.5, "norm": 0.5, "lm_head": 0.5}
    merged = merge_tensors(
        direct, thinking, method="linear", lam=0.5, module_lams="attn=0.8,mlp=0.2"
    )
    kinds = set()
    for name, tensor in merged.items():
        lam = lams[kind_of(name)]
        kinds.add(kind_of(name))
        expected = (1 - lam) * direct[name].double() + lam * thinking[name].double()
        torch.testing.assert_close(tensor.double(), expected, atol=1e-6, rtol=0)
    assert {"attn", "mlp", "norm", "embed"} <= kinds


def test_lam_per_module_kind_live_equals_offline_and_cli_records_it(tiny_pair, tmp_path):
    spec = MergeSpec("dare", 0.4, module_lams={"attn": 0.9, "mlp": 0.1}, seed=3)
    merger = LiveMerger.load(tiny_pair["direct"], tiny_pair["thinking"], tiny_pair["base"])
    loaded = merger.set(spec)
    assert "attn 0.90" in loaded.spec.label()
    out = tmp_path / "merged"
    args = ["merge", "--direct", str(tiny_pair["direct"]), "--thinking", str(tiny_pair["thinking"])]
    args += ["--base", str(tiny_pair["base"]), "--method", "dare", "--seed", "3"]
    assert main([*args, "--lam", "0.4,attn=0.9,mlp=0.1", "--out", str(out), "--quiet"]) == 0
    record = json.loads((out / "merge_config.json").read_text())
    assert record["scope"]["module_lams"] == {"attn": 0.9, "mlp": 0.1}
    offline = read_parent(out)
    live = {name: view.detach().clone() for name, view in merger.views.items()}
    for name, tensor in offline.items():
        torch.testing.assert_close(live[name].to(tensor.dtype), tensor, atol=0, rtol=0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("attn=0.8,mlp=0.5", "names no λ for embed, norm, lm_head"),
        ("0.5,ffn=0.3", "unknown module kind"),
        ("0.5,attn=x", "must be a number"),
        ("0.5,0.6", "one number"),
    ],
)
def test_bad_module_lams_are_one_line_errors(text, message):
    with pytest.raises(UserError, match=message):
        lam, module_lams = parse_lam_text(text)
        MergeSpec("linear", lam, module_lams=module_lams)


def test_module_lams_and_a_schedule_are_exclusive():
    with pytest.raises(UserError, match="either a λ schedule"):
        MergeSpec(lam_schedule=(0.1, 0.9), module_lams={"attn": 0.5})


# ------------------------------------------------------------------------ three stages


def test_stages_of_a_synthetic_grid():
    lams = [i / 10 for i in range(11)]
    think = [0, 0, 0, 0.05, 0.3, 0.6, 0.85, 0.95, 1, 1, 1]
    table = pd.DataFrame(
        dict(
            benchmark="b",
            method="linear",
            lam=lams,
            think=think,
            tokens=[10 + 5 * i for i in range(11)],
            mean=[0.1] * 4 + [0.3, 0.6, 0.8] + [0.9] * 4,
        )
    )
    found = stages(table).set_index("stage")
    assert list(found.index) == [1, 2, 3]
    assert (found.loc[1, "lam_from"], found.loc[1, "lam_to"]) == (0.0, 0.3)
    assert (found.loc[2, "lam_from"], found.loc[2, "lam_to"]) == (0.4, 0.6)
    assert (found.loc[3, "lam_from"], found.loc[3, "lam_to"]) == (0.7, 1.0)
    assert found.loc[1, "tokens_to"] == 25 and found.loc[3, "mean_from"] == 0.9
    # A noisy dip after thinking switched on stays in the later stage.
    noisy = table.assign(think=[0, 0, 0, 0.05, 0.3, 0.95, 0.85, 0.95, 1, 1, 1])
    assert stages(noisy).set_index("stage").loc[3, "lam_from"] == 0.5
