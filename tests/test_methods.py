"""Every merge method against an independent numpy implementation of its methods.md formula.

The oracles below are written from shared/reference/methods.md in float64 numpy; they never
call spectrum.methods. The merges go through the method contract exactly as the engine and
the live merger do: prepare per tensor, global_stats over the prepared stream, apply.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spectrum.errors import UserError
from spectrum.methods import REGISTRY, Parents, get_method, method_names, resolve_params

# A small "model": a norm (1-D), linear layers (2-D) and fused MoE experts (3-D).
SHAPES = {
    "model.norm.weight": (7,),
    "model.layers.0.self_attn.q_proj.weight": (6, 5),
    "model.layers.0.mlp.experts.gate_up_proj": (3, 4, 5),
    "model.layers.1.mlp.down_proj.weight": (9, 12),
}
LAMS = (0.0, 0.3, 0.5, 0.85, 1.0)


def make_model(seed: int = 0, spread: float = 0.1) -> dict[str, tuple[torch.Tensor, ...]]:
    """name -> (direct, thinking, base), float32, parents a small step away from the base."""
    rng = np.random.default_rng(seed)
    model = {}
    for name, shape in SHAPES.items():
        base = rng.normal(size=shape)
        direct = base + spread * rng.normal(size=shape)
        thinking = base + spread * rng.normal(size=shape)
        model[name] = tuple(torch.tensor(x, dtype=torch.float32) for x in (direct, thinking, base))
    return model


def as_numpy(model):
    return {name: tuple(t.double().numpy() for t in tensors) for name, tensors in model.items()}


def merge(method_name, model, lam, params=None, seed=0):
    """Drive the method contract over a whole model, as the engine does."""
    method = get_method(method_name)
    params = resolve_params(method, params)
    prepared = {
        name: method.prepare(Parents(name, d, t, b if method.needs_base else None), params, seed)
        for name, (d, t, b) in model.items()
    }
    stats = None
    if method.global_stats is not None:
        stats = method.global_stats(lambda: iter(prepared.items()), [lam], params)
    return {name: method.apply(p, lam, params, stats) for name, p in prepared.items()}


def assert_matches(merged, expected, atol=2e-6):
    assert merged.keys() == expected.keys()
    for name, tensor in merged.items():
        assert tensor.dtype == torch.float32, name
        np.testing.assert_allclose(tensor.double().numpy(), expected[name], atol=atol, err_msg=name)


# ---------------------------------------------------------------- independent oracles


def top_fraction(values: np.ndarray, fraction: float) -> np.ndarray:
    """Mask of the floor(k·N + 0.5) largest |values| (random data: no ties)."""
    flat = np.abs(values).ravel()
    count = int(np.floor(fraction * flat.size + 0.5))
    mask = np.zeros(flat.size, dtype=bool)
    mask[np.argsort(-flat, kind="stable")[:count]] = True
    return mask.reshape(values.shape)


def svd_map(matrix: np.ndarray, singular_map) -> np.ndarray:
    """Apply a function to the singular values of each matrix in the last two dims."""
    u, s, vh = np.linalg.svd(matrix, full_matrices=False)
    return np.matmul(u * singular_map(s)[..., None, :], vh)


def slerp_oracle(d, t, lam):
    cos = np.dot(d.ravel(), t.ravel()) / (np.linalg.norm(d) * np.linalg.norm(t))
    if abs(cos) > 1 - 1e-6:
        return (1 - lam) * d + lam * t
    omega = np.arccos(cos)
    return (np.sin((1 - lam) * omega) * d + np.sin(lam * omega) * t) / np.sin(omega)


def ties_oracle(d, t, b, lam, density):
    trimmed = [np.where(top_fraction(x - b, density), x - b, 0.0) for x in (d, t)]
    weights = (1 - lam, lam)
    elected = np.sign(weights[0] * trimmed[0] + weights[1] * trimmed[1])
    out = np.zeros_like(b)
    for index in np.ndindex(b.shape):
        agreeing = [
            (w, tau[index])
            for w, tau in zip(weights, trimmed, strict=True)
            if np.sign(tau[index]) == elected[index]
        ]
        total = sum(w for w, _ in agreeing)
        out[index] = sum(w * v for w, v in agreeing) / total if total > 0 else 0.0
    return b + out


def emr_oracle(model_np, lam):
    parts = {}
    sums = np.zeros(4)
    for name, (d, t, b) in model_np.items():
        tau_d, tau_t = d - b, t - b
        flag = np.sign(tau_d + tau_t)
        m_d, m_t = tau_d * flag > 0, tau_t * flag > 0
        uni = flag * np.maximum(np.abs(m_d * tau_d), np.abs(m_t * tau_t))
        parts[name] = (b, m_d * uni, m_t * uni)
        sums += [
            np.abs(tau_d).mean(),
            np.abs(tau_t).mean(),
            np.abs(m_d * uni).mean(),
            np.abs(m_t * uni).mean(),
        ]
    gamma_d, gamma_t = sums[0] / sums[2], sums[1] / sums[3]
    merged = {
        name: b + (1 - lam) * gamma_d * ud + lam * gamma_t * ut
        for name, (b, ud, ut) in parts.items()
    }
    return merged, (gamma_d, gamma_t)


def global_topk_positions(model_np, k):
    """Exact sort over the concatenated |Δ| of the whole model: the selected positions."""
    deltas = {name: np.abs(t - d).astype(np.float32) for name, (d, t, _) in model_np.items()}
    flat = np.concatenate([x.ravel() for x in deltas.values()])
    count = int(np.floor(k * flat.size + 0.5))
    if count == 0:
        return {name: np.zeros(x.shape, dtype=bool) for name, x in deltas.items()}
    threshold = np.sort(flat)[::-1][count - 1]
    return {name: x >= threshold for name, x in deltas.items()}


# ---------------------------------------------------------------- registry and contract


def test_registry_order_follows_methods_md():
    assert method_names() == [
        "linear",
        "slerp",
        "task_arithmetic",
        "dare",
        "ties",
        "emr",
        "twin",
        "lore",
        "topk_replace",
        "topk_diff_avg",
        "avg_topk_override",
    ]
    needs_base = {m.name for m in REGISTRY.values() if m.needs_base}
    assert needs_base == {"task_arithmetic", "dare", "ties", "emr"}
    interpolating = {m.name for m in REGISTRY.values() if m.interpolates}
    assert interpolating == {"linear", "slerp", "topk_replace"}


@pytest.mark.parametrize("name", [m.name for m in REGISTRY.values() if m.interpolates])
def test_interpolating_methods_give_parents_exactly(name):
    model = make_model(1)
    for lam, parent in ((0.0, 0), (1.0, 1)):
        for tensor_name, merged in merge(name, model, lam).items():
            assert torch.equal(merged, model[tensor_name][parent]), (name, lam, tensor_name)


@pytest.mark.parametrize("name", method_names())
def test_prepare_is_lambda_independent_and_apply_is_repeatable(name):
    """One prepare serves every λ: apply at λ then at λ' equals a fresh merge at λ'."""
    model = make_model(2)
    method = get_method(name)
    params = resolve_params(method)
    prepared = {
        n: method.prepare(Parents(n, d, t, b if method.needs_base else None), params, 0)
        for n, (d, t, b) in model.items()
    }
    stats = None
    if method.global_stats is not None:
        stats = method.global_stats(lambda: iter(prepared.items()), [0.2], params)
    for lam in (0.2, 0.7):
        reused = {n: method.apply(p, lam, params, stats) for n, p in prepared.items()}
        fresh = merge(name, model, lam)
        for n in model:
            assert torch.equal(reused[n], fresh[n]), (name, lam, n)


# ---------------------------------------------------------------- dense interpolation


@pytest.mark.parametrize("lam", LAMS)
def test_linear_matches_formula(lam):
    model = make_model()
    expected = {n: (1 - lam) * d + lam * t for n, (d, t, _) in as_numpy(model).items()}
    assert_matches(merge("linear", model, lam), expected)


@pytest.mark.parametrize("lam", LAMS)
def test_slerp_matches_formula(lam):
    model = make_model(spread=1.0)  # well away from collinear: the spherical branch
    expected = {n: slerp_oracle(d, t, lam) for n, (d, t, _) in as_numpy(model).items()}
    merged = merge("slerp", model, lam)
    assert_matches(merged, expected, atol=1e-5)
    if 0 < lam < 1:  # the spherical path really differs from a straight line
        d, t, _ = as_numpy(model)["model.layers.1.mlp.down_proj.weight"]
        linear = (1 - lam) * d + lam * t
        assert np.abs(merged["model.layers.1.mlp.down_proj.weight"].numpy() - linear).max() > 1e-3


def test_slerp_falls_back_to_linear_when_collinear():
    direct = torch.linspace(-1, 1, 40).reshape(5, 8)
    model = {"w": (direct, direct * 3.0, direct)}
    merged = merge("slerp", model, 0.25)["w"]
    np.testing.assert_allclose(merged.numpy(), (0.75 + 0.25 * 3.0) * direct.numpy(), atol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 0.5, 1.7])
@pytest.mark.parametrize("lam", LAMS)
def test_task_arithmetic_matches_formula(lam, scale):
    model = make_model()
    expected = {
        n: b + scale * ((1 - lam) * (d - b) + lam * (t - b))
        for n, (d, t, b) in as_numpy(model).items()
    }
    assert_matches(merge("task_arithmetic", model, lam, {"scale": scale}), expected, atol=5e-6)


# ---------------------------------------------------------------- DARE


def dare_model(size=20000):
    """Task vectors bounded away from 0, so kept and dropped entries are unmistakable."""
    rng = np.random.default_rng(3)
    base = rng.normal(size=size)
    out = []
    for _ in range(2):
        tau = rng.choice([-1.0, 1.0], size=size) * rng.uniform(0.5, 1.5, size=size)
        out.append(base + tau)
    return {"layer.weight": tuple(torch.tensor(x, dtype=torch.float32) for x in (*out, base))}


def test_dare_follows_formula_with_independent_bernoulli_masks():
    drop = 0.3
    keep = 1 - drop
    model = dare_model()
    d, t, b = as_numpy(model)["layer.weight"]
    tau_d, tau_t = d - b, t - b
    # λ=0 and λ=1 reveal each mask: every entry is either 0 or τ/(1−p).
    at0 = merge("dare", model, 0.0, {"drop_rate": drop})["layer.weight"].double().numpy() - b
    at1 = merge("dare", model, 1.0, {"drop_rate": drop})["layer.weight"].double().numpy() - b
    mask_d = np.abs(at0 - tau_d / keep) < 1e-4
    mask_t = np.abs(at1 - tau_t / keep) < 1e-4
    assert np.all(mask_d | (np.abs(at0) < 1e-4)) and np.all(mask_t | (np.abs(at1) < 1e-4))
    # Keep rates near 1 − p (σ ≈ 0.003 here) and the two masks independent.
    assert abs(mask_d.mean() - keep) < 0.015 and abs(mask_t.mean() - keep) < 0.015
    assert abs((mask_d & mask_t).mean() - keep * keep) < 0.015
    lam = 0.35
    expected = b + (1 - lam) * mask_d * tau_d / keep + lam * mask_t * tau_t / keep
    merged = merge("dare", model, lam, {"drop_rate": drop})
    assert_matches(merged, {"layer.weight": expected}, atol=5e-6)


def test_dare_same_seed_same_bytes_other_seed_other_masks():
    model = make_model(4)
    first = merge("dare", model, 0.6, seed=7)
    again = merge("dare", dict(reversed(list(model.items()))), 0.6, seed=7)  # other order
    other = merge("dare", model, 0.6, seed=8)
    for name in model:
        assert first[name].numpy().tobytes() == again[name].numpy().tobytes()
    differing = [name for name in model if not torch.equal(first[name], other[name])]
    assert len(differing) == len(model)


def test_dare_masks_depend_on_tensor_name():
    tensors = dare_model()["layer.weight"]
    a = merge("dare", {"a.weight": tensors}, 1.0)["a.weight"]
    b = merge("dare", {"b.weight": tensors}, 1.0)["b.weight"]
    assert not torch.equal(a, b)


# ---------------------------------------------------------------- TIES


@pytest.mark.parametrize("density", [0.8, 0.5])
@pytest.mark.parametrize("lam", LAMS)
def test_ties_matches_formula(lam, density):
    model = make_model(5)
    expected = {n: ties_oracle(d, t, b, lam, density) for n, (d, t, b) in as_numpy(model).items()}
    assert_matches(merge("ties", model, lam, {"density": density}), expected)


def test_ties_really_trims():
    """With density 0.5 the result differs from an untrimmed TIES, and matches the trimmed one."""
    model = make_model(6)
    merged = merge("ties", model, 0.4, {"density": 0.5})
    for name, (d, t, b) in as_numpy(model).items():
        if d.size < 10:
            continue
        trimmed = ties_oracle(d, t, b, 0.4, 0.5)
        untrimmed = ties_oracle(d, t, b, 0.4, 1.0)
        assert np.abs(trimmed - untrimmed).max() > 1e-2
        np.testing.assert_allclose(merged[name].double().numpy(), trimmed, atol=2e-6)
    # density 0 trims everything: the base comes back.
    for name, tensor in merge("ties", model, 0.4, {"density": 0.0}).items():
        assert torch.equal(tensor, model[name][2])


# ---------------------------------------------------------------- EMR


@pytest.mark.parametrize("lam", LAMS)
def test_emr_matches_formula_with_whole_model_rescalers(lam):
    model = make_model(7)
    expected, (gamma_d, gamma_t) = emr_oracle(as_numpy(model), lam)
    assert_matches(merge("emr", model, lam), expected, atol=5e-6)
    method = get_method("emr")
    params = resolve_params(method)
    prepared = [(n, method.prepare(Parents(n, *ts), params, 0)) for n, ts in model.items()]
    stats = method.global_stats(lambda: iter(prepared), [lam], {})
    assert stats.direct == pytest.approx(gamma_d, rel=1e-6)
    assert stats.thinking == pytest.approx(gamma_t, rel=1e-6)
    # A per-tensor γ would differ: the statistic really is global.
    one = {n: ts for n, ts in model.items() if n.endswith("down_proj.weight")}
    _, (gamma_one, _) = emr_oracle(as_numpy(one), lam)
    assert abs(gamma_one - gamma_d) > 1e-3


# ---------------------------------------------------------------- TWIN and LoRE


def twin_closed_form(d, t, lam, keep, variant):
    half = (t - d) / 2
    if variant == "svd" and half.ndim >= 2:
        rank = min(half.shape[-2:])
        kept = int(np.floor(keep * rank + 0.5))
        sparse = svd_map(half, lambda s: np.where(np.arange(s.shape[-1]) < kept, s, 0.0))
    else:
        sparse = np.where(top_fraction(half, keep), half, 0.0)
    return (d + t) / 2 + (2 * lam - 1) * sparse


@pytest.mark.parametrize("with_base", [False, True])
@pytest.mark.parametrize("variant", ["magnitude", "svd"])
@pytest.mark.parametrize("lam", LAMS)
def test_twin_matches_two_model_closed_form(lam, variant, with_base):
    model = make_model(8)
    if not with_base:
        model = {n: (d, t, None) for n, (d, t, _) in model.items()}
    params = {"mask_rate": 0.4, "variant": variant}
    method = get_method("twin")
    params = resolve_params(method, params)
    prepared = {n: method.prepare(Parents(n, *ts), params, 0) for n, ts in model.items()}
    merged = {n: method.apply(p, lam, params, None) for n, p in prepared.items()}
    expected = {
        n: twin_closed_form(d.double().numpy(), t.double().numpy(), lam, 0.6, variant)
        for n, (d, t, _) in model.items()
    }
    assert_matches(merged, expected, atol=5e-6)


@pytest.mark.parametrize("iterations", [1, 2, 3])
@pytest.mark.parametrize("lam", LAMS)
def test_lore_matches_two_model_closed_form(lam, iterations):
    model = make_model(9, spread=0.3)
    mu = 0.25  # shrinks some singular values of Δ/2 to zero, leaves others
    expected = {}
    for n, (d, t, _) in as_numpy(model).items():
        half = (t - d) / 2
        shrunk = svd_map(half, lambda s: np.maximum(s - mu, 0)) if half.ndim >= 2 else half
        expected[n] = (d + t) / 2 + (2 * lam - 1) * shrunk
    merged = merge("lore", model, lam, {"mu": mu, "iterations": iterations})
    assert_matches(merged, expected, atol=5e-6)
    # The threshold bites: some but not all singular values of Δ/2 fall below μ.
    d, t, _ = as_numpy(model)["model.layers.1.mlp.down_proj.weight"]
    singular = np.linalg.svd((t - d) / 2, compute_uv=False)
    assert (singular < mu).any() and (singular > mu).any()


def test_lore_descent_stops_once_the_shared_model_settles(monkeypatch):
    """Two models settle after one iteration: 2 SVDs per tensor, not 2 per iteration."""
    import spectrum.methods.lore as lore

    estimates = []
    real_estimate = lore._estimate

    def counted(residual, mu):
        estimates.append(residual.shape)
        return real_estimate(residual, mu)

    monkeypatch.setattr(lore, "_estimate", counted)
    merge("lore", make_model(9, spread=0.3), 0.5, {"iterations": 5})
    assert len(estimates) == 2 * len(SHAPES)


# ---------------------------------------------------------------- Top-K strategies

KS = (0.0, 0.05, 0.37, 0.5, 0.9, 1.0)


def topk_expected(name, d, t, selected):
    mid = (d + t) / 2
    rest, top = {
        "topk_replace": (d, t),
        "topk_diff_avg": (d, mid),
        "avg_topk_override": (mid, t),
    }[name]
    return np.where(selected, top, rest)


@pytest.mark.parametrize("name", ["topk_replace", "topk_diff_avg", "avg_topk_override"])
@pytest.mark.parametrize("k", KS)
def test_global_topk_positions_equal_exact_sort(name, k):
    model = make_model(10)
    model_np = as_numpy(model)
    selected = global_topk_positions(model_np, k)
    expected = {n: topk_expected(name, d, t, selected[n]) for n, (d, t, _) in model_np.items()}
    assert_matches(merge(name, model, k), expected, atol=1e-7)


@pytest.mark.parametrize("name", ["topk_replace", "topk_diff_avg", "avg_topk_override"])
@pytest.mark.parametrize("k", KS)
def test_per_tensor_topk_positions_equal_exact_sort(name, k):
    model = make_model(11)
    merged = merge(name, model, k, {"scope": "per_tensor"})
    for n, (d, t, b) in as_numpy(model).items():
        selected = global_topk_positions({n: (d, t, b)}, k)[n]
        np.testing.assert_allclose(
            merged[n].numpy(), topk_expected(name, d, t, selected), atol=1e-7
        )


def test_topk_diff_avg_averages_the_most_different_positions():
    direct = torch.zeros(10)
    thinking = torch.arange(1.0, 11.0)  # |Δ| grows with the index
    merged = merge("topk_diff_avg", {"w": (direct, thinking, direct)}, 0.3)["w"]
    expected = torch.cat([torch.zeros(7), thinking[7:] / 2])
    assert torch.equal(merged, expected)


def test_global_threshold_for_a_new_k_costs_at_most_one_pass():
    model = make_model(12)
    method = get_method("topk_replace")
    params = resolve_params(method)
    prepared = {n: method.prepare(Parents(n, d, t), params, 0) for n, (d, t, _) in model.items()}
    passes = []

    def stream():
        passes.append(1)
        return iter(prepared.items())

    stats = method.global_stats(stream, [0.3, 0.6], params)
    assert len(passes) == 2  # coarse histogram + one refinement for both k
    for k in (0.3, 0.6):
        method.apply(prepared["model.norm.weight"], k, params, stats)
    assert len(passes) == 2
    merged = {n: method.apply(p, 0.77, params, stats) for n, p in prepared.items()}
    assert len(passes) <= 3
    model_np = as_numpy(model)
    selected = global_topk_positions(model_np, 0.77)
    for n, (d, t, _) in model_np.items():
        np.testing.assert_array_equal(merged[n].numpy(), np.where(selected[n], t, d))


def test_threshold_is_exact_with_ties_zeros_and_subnormals():
    from spectrum.methods.common.magnitude import MagnitudeThreshold

    values = np.array(
        [0.0, 0.0, 1e-40, 3e-39, 1.0, 1.0, 1.0, 1.0000001, 2.5, 7.0], dtype=np.float32
    )
    chunks = [torch.tensor(values[:4]), torch.tensor(values[4:])]
    threshold = MagnitudeThreshold(lambda: iter(chunks))
    descending = np.sort(values)[::-1]
    for k in np.linspace(0, 1, 21):
        count = int(np.floor(k * values.size + 0.5))
        expected = None if count == 0 else float(descending[count - 1])
        assert threshold.threshold(float(k)) == expected, k
    # Ties at the threshold are all selected: 4 of 10 asked, all three 1.0s come along.
    assert (values >= threshold.threshold(0.4)).sum() == 6


# ---------------------------------------------------------------- parameters


def test_resolve_params_fills_defaults_and_converts_cli_strings():
    assert resolve_params("dare") == {"drop_rate": 0.2}
    assert resolve_params("ties") == {"density": 0.8, "tie_break": "zero"}
    assert resolve_params("twin") == {"mask_rate": 0.2, "variant": "magnitude"}
    assert resolve_params("lore") == {"mu": 0.1, "iterations": 2}
    assert resolve_params("topk_replace") == {"scope": "global"}
    assert resolve_params("task_arithmetic") == {"scale": 1.0}
    assert resolve_params("ties", {"density": "0.5"}) == {"density": 0.5, "tie_break": "zero"}
    assert resolve_params("lore", {"iterations": "3", "mu": 1}) == {"mu": 1.0, "iterations": 3}
    assert resolve_params("linear", {}) == {}


@pytest.mark.parametrize(
    ("method", "given", "message"),
    [
        ("ties", {"density": 1.5}, "ties parameter density=1.5 is out of range"),
        ("dare", {"drop_rate": "1"}, "dare parameter drop_rate='1' is out of range"),
        ("ties", {"density": "lots"}, "density='lots' is not a valid float"),
        ("ties", {"density": "nan"}, "is not a valid float"),
        ("lore", {"iterations": "2.5"}, "iterations='2.5' is not a valid int"),
        ("lore", {"iterations": 0}, "out of range"),
        ("twin", {"variant": "qr"}, "twin parameter variant='qr' is not one of magnitude, svd"),
        ("topk_replace", {"scope": "layer"}, "is not one of global, per_tensor"),
        ("ties", {"densty": 0.5}, "no parameter 'densty'; its parameters: density, tie_break"),
        ("linear", {"scale": 2}, "method linear has no parameter 'scale'; its parameters: none"),
        ("ties", {"density": True}, "is not a valid float"),
        ("nope", {}, "unknown merge method 'nope'"),
    ],
)
def test_resolve_params_rejects_bad_values(method, given, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[")):
        resolve_params(method, given)


@pytest.mark.parametrize("scope", ["global", "per_tensor"])
def test_topk_strength_outside_unit_interval_is_a_user_error(scope):
    method = get_method("topk_replace")
    params = resolve_params(method, {"scope": scope})
    with pytest.raises(UserError, match=r"top-k fraction \(k = λ\) must lie in \[0, 1\], got 1.2"):
        method.global_stats(lambda: iter(()), [0.5, 1.2], params)  # before any apply
    with pytest.raises(UserError, match=r"must lie in \[0, 1\], got -0.1"):
        merge("topk_replace", make_model(), -0.1, {"scope": scope})


@pytest.mark.parametrize("tie_break", ["zero", "plus"])
def test_ties_fast_path_equals_the_three_steps(tie_break):
    """``apply`` for 0 < λ < 1 (blocks, no ``where``) equals the steps as written on the
    cases that decide it: equal and opposite task vectors (combined exactly 0), zeros on
    either side, subnormals, and several blocks."""
    from spectrum.methods import ties

    generator = torch.Generator().manual_seed(3)
    n = ties._BLOCK * 2 + 1000
    base = torch.randn(n, generator=generator)
    direct = torch.randn(n, generator=generator)
    thinking = torch.randn(n, generator=generator)
    thinking[:500] = -direct[:500]  # combined is exactly 0 at λ = 0.5
    thinking[500:1000] = direct[500:1000]
    direct[1000:1500] = 0.0
    thinking[1500:2000] = 0.0
    direct[2000:2100] = 1e-44  # products underflow to 0
    thinking[2100:2200] = -1e-44
    prepared = {"base": base, "trimmed_direct": direct, "trimmed_thinking": thinking}
    for lam in (0.5, 0.25, 0.9, 1e-30, 1 - 1e-7):
        fast = ties.apply(prepared, lam, {"tie_break": tie_break}, None)
        assert torch.equal(fast, ties.apply_elected(prepared, lam, tie_break)), lam
