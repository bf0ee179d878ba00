"""Every decoder family transformers ships, on every path: the family × path matrix.

For each family a tiny random pair with a base is built from transformers' own config
class (``spectrum.toy.tiny``: hidden 64, 2 layers), untied and tied. Each path is checked
against something it does not share code with:

- offline merge (linear, slerp, ties, topk_replace) against float64 formulas written here;
- the live merger's ``set()`` against the offline merge's files, byte for byte;
- the spectrum model's logits at λ 0, 0.3 and 1 against separately merged models
  (the parents and the offline linear merge loaded with ``from_pretrained``), within
  1e-4 of the largest logit, and greedy tokens equal;
- a default sweep runs through the spectrum model (and re-merges per λ when told the
  spectrum model cannot serve the pair).

Each test records its largest difference; ``bench/family_matrix.py`` runs this file and
prints the README's "Supported models" table from them (``SPECTRUM_FAMILY_MATRIX``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from spectrum.eval.sweep import SweepSpec, run_sweep
from spectrum.live import LiveMerger
from spectrum.live.spectrum_model import SpectrumModel
from spectrum.merge import MergeConfig, MergeSpec, merge_checkpoints
from spectrum.toy.tiny import ARCHITECTURES, save_tiny_pair
from spectrum.weights.checkpoint import open_checkpoint

FAMILIES = [arch for arch in ARCHITECTURES if arch in CONFIG_MAPPING]
LAM = 0.3
METHODS = ("linear", "slerp", "ties", "topk_replace")
LOGIT_RTOL = 1e-4  # of the row's largest logit


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def matrix():
    """(family, path) → largest difference; written out when SPECTRUM_FAMILY_MATRIX says."""
    cells: dict[str, dict[str, float | str]] = {}
    yield cells
    out = os.environ.get("SPECTRUM_FAMILY_MATRIX")
    if out:
        Path(out).write_text(json.dumps(cells, indent=1, sort_keys=True))


@pytest.fixture(scope="session")
def family_root(tmp_path_factory):
    return tmp_path_factory.mktemp("families")


_PAIRS: dict[tuple[str, bool], dict[str, Path]] = {}


def _pair(root: Path, family: str, tied: bool) -> dict[str, Path]:
    key = (family, tied)
    if key not in _PAIRS:
        overrides = dict(num_hidden_layers=2, tie_word_embeddings=tied)
        folder = root / f"{family}-{'tied' if tied else 'untied'}"
        _PAIRS[key] = save_tiny_pair(folder, family, seed=3, config_overrides=overrides)
    return _PAIRS[key]


_MERGED: dict[tuple[str, bool, str], Path] = {}


def _merged(root: Path, family: str, tied: bool, method: str) -> Path:
    """The offline merge at λ = 0.3 (k = 0.3 for topk_replace), made once per session."""
    key = (family, tied, method)
    if key not in _MERGED:
        pair = _pair(root, family, tied)
        config = MergeConfig(
            direct=str(pair["direct"]), thinking=str(pair["thinking"]), base=str(pair["base"]),
            spec=MergeSpec(method, LAM), device="cpu",
        )  # fmt: skip
        out = root / f"merged-{family}-{tied}-{method}"
        _MERGED[key] = merge_checkpoints(config, out, progress=False)
    return _MERGED[key]


def _record(matrix, family: str, path: str, value: float | str) -> None:
    cell = matrix.setdefault(family, {})
    previous = cell.get(path)
    if isinstance(value, float) and isinstance(previous, float):
        value = max(value, previous)
    cell[path] = value


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    checkpoint = open_checkpoint(path)
    return {name: checkpoint.get(name) for name in checkpoint.names()}


# ---------------------------------------------------------------- float64 formulas


def _top_fraction(values: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mask of the floor(k·N + 0.5) largest |values| (random data: no ties)."""
    flat = values.abs().reshape(-1)
    count = int(fraction * flat.numel() + 0.5)
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[torch.argsort(-flat, stable=True)[:count]] = True
    return mask.view(values.shape)


def _slerp(d: torch.Tensor, t: torch.Tensor, lam: float) -> torch.Tensor:
    norms = d.norm() * t.norm()
    cos = float((d * t).sum() / norms) if norms > 0 else 1.0
    if abs(cos) > 1 - 1e-6:
        return (1 - lam) * d + lam * t
    omega = torch.arccos(torch.tensor(cos, dtype=torch.float64))
    return (torch.sin((1 - lam) * omega) * d + torch.sin(lam * omega) * t) / torch.sin(omega)


def _ties(d: torch.Tensor, t: torch.Tensor, b: torch.Tensor, lam: float) -> torch.Tensor:
    density = 0.8  # the method's default
    taus = [torch.where(_top_fraction(x - b, density), x - b, 0.0) for x in (d, t)]
    weights = (1 - lam, lam)
    elected = torch.sign(weights[0] * taus[0] + weights[1] * taus[1])
    agree = [(torch.sign(tau) == elected) & (elected != 0) for tau in taus]
    total = sum(w * a for w, a in zip(weights, agree, strict=True))
    summed = sum(w * a * tau for w, a, tau in zip(weights, agree, taus, strict=True))
    return b + torch.where(total > 0, summed / torch.where(total > 0, total, 1.0), 0.0)


def _expected(method: str, parents: dict[str, dict[str, torch.Tensor]]) -> dict:
    d64 = {n: x.double() for n, x in parents["direct"].items() if x.is_floating_point()}
    t64 = {n: parents["thinking"][n].double() for n in d64}
    b64 = {n: parents["base"][n].double() for n in d64}
    if method == "linear":
        return {n: (1 - LAM) * d64[n] + LAM * t64[n] for n in d64}
    if method == "slerp":
        return {n: _slerp(d64[n], t64[n], LAM) for n in d64}
    if method == "ties":
        return {n: _ties(d64[n], t64[n], b64[n], LAM) for n in d64}
    # topk_replace: θ_T at the k = λ fraction of positions with the largest float32 |Δ| of
    # the whole model, θ_D elsewhere.
    deltas = {n: (parents["thinking"][n] - parents["direct"][n]).abs() for n in d64}
    flat = torch.cat([x.reshape(-1) for x in deltas.values()])
    count = int(LAM * flat.numel() + 0.5)
    threshold = flat.sort(descending=True).values[count - 1]
    return {n: torch.where(deltas[n] >= threshold, t64[n], d64[n]) for n in d64}


# ---------------------------------------------------------------- the matrix


@pytest.mark.parametrize("family", FAMILIES)
def test_offline_merges_match_float64_formulas(family, family_root, matrix):
    pair = _pair(family_root, family, tied=False)
    parents = {role: _tensors(path) for role, path in pair.items()}
    for method in METHODS:
        merged = _tensors(_merged(family_root, family, False, method))
        expected = _expected(method, parents)
        assert set(expected) <= set(merged), f"{family} {method}: tensors missing"
        worst = 0.0
        for name, want in expected.items():
            got = merged[name].double()
            error = float((got - want).abs().max())
            assert error <= 2e-6 + 1e-5 * float(want.abs().max()), f"{family} {method} {name}"
            worst = max(worst, error)
        _record(matrix, family, f"offline {method}", worst)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("family", FAMILIES)
def test_live_set_writes_the_offline_merge(family, tied, family_root, matrix):
    pair = _pair(family_root, family, tied)
    live = LiveMerger.load(pair["direct"], pair["thinking"], pair["base"], device="cpu")
    # Every checkpoint tensor is mapped, persistent buffers included (DeepSeek-V3's
    # e_score_correction_bias): none falls outside what set() writes.
    assert set(open_checkpoint(pair["direct"]).names()) <= set(live.views) | _tied_names(live)
    methods = METHODS if not tied else ("linear", "topk_replace")
    for method in methods:
        live.set(MergeSpec(method, LAM))
        offline = _tensors(_merged(family_root, family, tied, method))
        for name, view in live.views.items():
            assert torch.equal(view, offline[name]), f"{family} {method} {name}"
    _record(matrix, family, "live set()" + (" tied" if tied else ""), 0.0)


def _tied_names(live: LiveMerger) -> set[str]:
    """Checkpoint names of tied duplicates: in the state dict, not among the views."""
    return set(live.model.state_dict()) - set(live.views)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_spectrum_model_matches_separately_merged_models(family, tied, family_root, matrix):
    pair = _pair(family_root, family, tied)
    references = {
        0.0: pair["direct"],
        LAM: _merged(family_root, family, tied, "linear"),
        1.0: pair["thinking"],
    }
    spectrum = SpectrumModel.load(pair["direct"], pair["thinking"], device="cpu")
    _check_forms(spectrum)
    lams = [0.0, LAM, 1.0, LAM]
    ids = torch.randint(3, 60, (len(lams), 9), generator=torch.Generator().manual_seed(1))
    logits = spectrum(ids, lams).logits
    tokens = spectrum.generate(ids, lams, do_sample=False, max_new_tokens=5)
    worst = 0.0
    for lam, folder in references.items():
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        want = model(ids).logits
        merged_tokens = model.generate(ids, do_sample=False, max_new_tokens=5)
        for row in [r for r, row_lam in enumerate(lams) if row_lam == lam]:
            scale = float(want[row].abs().max())
            error = float((logits[row] - want[row]).abs().max()) / scale
            assert error <= LOGIT_RTOL, f"{family} λ={lam}: logits off by {error:.2e}"
            assert torch.equal(tokens[row], merged_tokens[row]), f"{family} λ={lam}: tokens"
            worst = max(worst, error)
    _record(matrix, family, "spectrum model" + (" tied" if tied else ""), worst)


def _check_forms(spectrum: SpectrumModel) -> None:
    """Linear layers, embeddings and norms are measured affine (two passes, no per-λ
    copies); only small tensors (routers, sinks, biases) are materialised per λ."""
    from spectrum.live.spectrum_modules import (
        AffineModule,
        ExpertsModule,
        PerRowModule,
        is_experts,
    )

    config = spectrum.model.config
    for label, module in spectrum.model.named_modules():
        if not hasattr(module, "spectrum_names"):
            continue
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)) or "norm" in label:
            assert isinstance(module, AffineModule), f"{label} is {type(module).__mro__[1]}"
        if is_experts(module):
            assert isinstance(module, ExpertsModule), f"{label} is {type(module).__mro__[1]}"
        if isinstance(module, PerRowModule):
            held = sum(getattr(module, name).numel() for name in module.spectrum_names)
            assert held <= config.hidden_size * 8, f"{label} holds {held} per λ"


@pytest.mark.parametrize("family", ["gemma3_text", "deepseek_v3"])
def test_bfloat16_pairs_measure_the_same_forms(family, tmp_path):
    """Rounding in bfloat16 is within the forms' tolerance; a nonlinearity is not."""
    overrides = dict(num_hidden_layers=2)
    pair = save_tiny_pair(tmp_path, family, seed=3, config_overrides=overrides,
                          dtype=torch.bfloat16)  # fmt: skip
    spectrum = SpectrumModel.load(pair["direct"], pair["thinking"], device="cpu")
    assert spectrum.model.dtype == torch.bfloat16
    _check_forms(spectrum)


def _sweep_spec(pair, **overrides) -> SweepSpec:
    settings = dict(
        direct=str(pair["direct"]), thinking=str(pair["thinking"]), base=str(pair["base"]),
        methods=("linear",), lams=(0.0, LAM, 1.0), limit=1, levels=(1,),
        decoding=dict(max_new_tokens=4, do_sample=False), batch_size=2,
    )  # fmt: skip
    return SweepSpec(**{**settings, **overrides})


@pytest.mark.parametrize("family", FAMILIES)
def test_default_sweep_completes_on_the_spectrum_model(
    family, family_root, tmp_path, matrix, caplog
):
    pair = _pair(family_root, family, tied=False)
    with caplog.at_level(logging.WARNING):
        result = run_sweep(_sweep_spec(pair), tmp_path / "sweep.duckdb", progress=False)
    assert result.generated == 3 and not result.stopped
    assert not [r for r in caplog.records if "re-merging per λ" in r.message]
    _record(matrix, family, "sweep", "completes")


def test_sweep_re_merges_per_lam_when_the_spectrum_model_cannot_serve(
    family_root, tmp_path, monkeypatch, caplog
):
    """A pair whose router may not be materialised per row (limit 0): the sweep says so
    once and writes the rows the per-λ sweep writes."""
    import pandas as pd

    from spectrum.live import spectrum_modules

    pair = _pair(family_root, "qwen3_moe", tied=False)
    spec = _sweep_spec(pair, methods=("linear", "dare"))
    per_lam = run_sweep(spec, tmp_path / "per_lam.duckdb", progress=False, batch_lams=False)
    monkeypatch.setattr(spectrum_modules, "PER_ROW_LIMIT", 0)
    with caplog.at_level(logging.WARNING):
        fallback = run_sweep(spec, tmp_path / "fallback.duckdb", progress=False)
    notes = [r.message for r in caplog.records if "re-merging per λ" in r.message]
    assert len(notes) == 1 and "Qwen3MoeTopKRouter" in notes[0]
    assert fallback.generated == per_lam.generated == 6

    def rows(db):
        import duckdb

        con = duckdb.connect(str(db), read_only=True)
        frame = con.execute("SELECT config_id, problem_id, response FROM samples").df()
        con.close()
        return frame.sort_values(["config_id", "problem_id"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(
        rows(tmp_path / "fallback.duckdb"), rows(tmp_path / "per_lam.duckdb")
    )


def test_generate_cli_re_merges_per_lam_for_a_method_it_cannot_batch(family_root, capsys):
    from spectrum.cli import main

    pair = _pair(family_root, "llama", tied=False)
    args = ["generate", "--direct", str(pair["direct"]), "--thinking", str(pair["thinking"]),
            "--method", "slerp", "--lams", "0,0.3", "--prompt", "hi", "--greedy",
            "--max-new-tokens", "3", "--device", "cpu", "--json"]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    assert captured.err.count("re-merging for each λ") == 1
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["lam"] for r in records] == [0.0, 0.3]
    assert all(r["spec"]["method"] == "slerp" for r in records)


# ---------------------------------------------------------------- pair checks


def _copy(folder: Path, to: Path, edit_config=None, edit_tokenizer=None) -> Path:
    shutil.copytree(folder, to)
    for name, edit in (("config.json", edit_config), ("tokenizer.json", edit_tokenizer)):
        if edit is not None:
            data = json.loads((to / name).read_text())
            edit(data)
            (to / name).write_text(json.dumps(data))
    return to


def _validate(direct: Path, thinking: Path) -> list[str]:
    from spectrum.weights.validate import validate_parents

    return validate_parents(open_checkpoint(direct), open_checkpoint(thinking))


def test_configs_are_compared_as_transformers_builds_them(family_root, tmp_path):
    from spectrum.errors import UserError

    direct = _pair(family_root, "llama", tied=False)["direct"]

    def older_form(config):  # transformers 4 wrote rope_theta, and no default-valued keys
        config["rope_theta"] = config.pop("rope_parameters")["rope_theta"]
        config.pop("attention_bias")
        config.pop("mlp_bias")

    old = _copy(direct, tmp_path / "old", edit_config=older_form)
    assert _validate(direct, old) == []

    def other_architecture(config):
        config["rope_parameters"]["rope_theta"] = 5e5
        config["attention_bias"] = True

    other = _copy(direct, tmp_path / "other", edit_config=other_architecture)
    with pytest.raises(UserError, match="rope_parameters .*500000.*; attention_bias False vs True"):
        _validate(direct, other)


def test_renamed_special_tokens_warn_and_a_different_vocabulary_is_refused(family_root, tmp_path):
    from spectrum.errors import UserError

    direct = _pair(family_root, "llama", tied=False)["direct"]

    def rename(tokenizer):  # as R1-Distill renames Qwen's special tokens, ids unchanged
        for token in tokenizer["added_tokens"]:
            if token["content"] == "<|endoftext|>":
                token["content"] = "<｜end▁of▁sentence｜>"
        vocab = tokenizer["model"]["vocab"]
        vocab["<｜end▁of▁sentence｜>"] = vocab.pop("<|endoftext|>")

    renamed = _copy(direct, tmp_path / "renamed", edit_tokenizer=rename)
    (warning,) = _validate(direct, renamed)
    assert "0: '<|endoftext|>' vs '<｜end▁of▁sentence｜>'" in warning

    def swap_letters(tokenizer):
        vocab = tokenizer["model"]["vocab"]
        vocab["a"], vocab["b"] = vocab["b"], vocab["a"]

    swapped = _copy(direct, tmp_path / "swapped", edit_tokenizer=swap_letters)
    with pytest.raises(UserError, match="ordinary tokens differ at 2 ids"):
        _validate(direct, swapped)


def test_the_chat_template_warning_names_whose_template_is_used(family_root, tmp_path):
    from spectrum.weights.validate import validate_parents

    pair = _pair(family_root, "llama", tied=False)
    other = _copy(pair["thinking"], tmp_path / "thinking")
    (other / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    checkpoints = open_checkpoint(pair["direct"]), open_checkpoint(other)
    (warning,) = validate_parents(*checkpoints, template_from="thinking")
    assert warning.endswith("the thinking parent's is used")


# ---------------------------------------------------------------- planner


def test_planner_reads_fused_experts_from_the_model_not_names(family_root):
    """Mixtral's w1/w3 are fused into gate_up_proj on load: its probe is planned from
    the parameter's shape (experts × 2·intermediate × hidden, two int32 copies)."""
    from spectrum.weights.planner import read_pair

    pair = _pair(family_root, "mixtral", tied=False)
    config = json.loads((pair["direct"] / "config.json").read_text())
    experts, inner, hidden = (
        config["num_local_experts"], config["intermediate_size"], config["hidden_size"]
    )  # fmt: skip
    facts = read_pair(pair["direct"], pair["thinking"])
    assert any(".w1." in n for n in open_checkpoint(pair["direct"]).names())
    assert facts.probe_bytes == 2 * 4 * experts * 2 * inner * hidden
    assert facts.unmapped == ()
    dense = _pair(family_root, "llama", tied=False)
    assert read_pair(dense["direct"], dense["thinking"]).probe_bytes == 0


def test_planner_refuses_a_checkpoint_tensor_the_model_has_no_place_for(family_root, tmp_path):
    from safetensors.torch import save_file

    from spectrum.errors import UserError
    from spectrum.weights.planner import check_live, read_pair

    pair = _pair(family_root, "llama", tied=False)
    extra = "model.layers.0.mlp.extra.weight"
    roles = {}
    for role in ("direct", "thinking"):
        folder = shutil.copytree(pair[role], tmp_path / role)
        save_file({extra: torch.zeros(4, 4)}, folder / "extra.safetensors")
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        index["weight_map"][extra] = "extra.safetensors"
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        roles[role] = folder
    assert read_pair(roles["direct"], roles["thinking"]).unmapped == (extra,)
    with pytest.raises(UserError, match=f"no parameter for checkpoint tensor {extra}"):
        check_live(roles["direct"], roles["thinking"], device="cpu")
    # DeepSeek-V3's correction bias is a buffer the model holds: planned, not refused.
    deepseek = _pair(family_root, "deepseek_v3", tied=False)
    assert check_live(deepseek["direct"], deepseek["thinking"], device="cpu") == "auto"


# ---------------------------------------------------------------- focused cases


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text"])
@torch.no_grad()
def test_gemma_scaled_embedding_alone_in_scope(family, family_root, tmp_path):
    """Gemma multiplies its embedding by √hidden inside the module: merging only the
    embedding must scale E₀ and E₁ alike (it once scaled one side only)."""
    from spectrum.merge.scope import MergeScope

    pair = _pair(family_root, family, tied=False)
    scope = MergeScope(modules=("embed",))
    spectrum = SpectrumModel.load(pair["direct"], pair["thinking"], scope=scope, device="cpu")
    ids = torch.randint(3, 60, (2, 9), generator=torch.Generator().manual_seed(2))
    logits = spectrum(ids, [LAM, 1.0]).logits
    for row, lam in enumerate([LAM, 1.0]):
        config = MergeConfig(
            direct=str(pair["direct"]), thinking=str(pair["thinking"]),
            spec=MergeSpec("linear", lam, modules=("embed",)), device="cpu",
        )  # fmt: skip
        out = merge_checkpoints(config, tmp_path / f"embed-{lam}", progress=False)
        want = AutoModelForCausalLM.from_pretrained(out).eval()(ids).logits[row]
        error = float((logits[row] - want).abs().max()) / float(want.abs().max())
        assert error <= LOGIT_RTOL, f"{family} λ={lam}: {error:.2e}"


@torch.no_grad()
def test_threads_keep_their_own_lams_through_per_row_attention(family_root):
    """gpt-oss's attention sinks are materialised per λ with the KV cache split by rows;
    two threads generating at once each get what they get alone."""
    import threading

    pair = _pair(family_root, "gpt_oss", tied=False)
    spectrum = SpectrumModel.load(pair["direct"], pair["thinking"], device="cpu")
    ids = torch.randint(3, 60, (3, 6), generator=torch.Generator().manual_seed(4))
    asks = {"a": [0.0, 0.5, 1.0], "b": [0.7, 0.7, 0.2]}
    alone = {
        key: spectrum.generate(ids, lams, do_sample=False, max_new_tokens=6)
        for key, lams in asks.items()
    }
    together: dict[str, torch.Tensor] = {}

    def ask(key: str) -> None:
        with torch.no_grad():
            together[key] = spectrum.generate(ids, asks[key], do_sample=False, max_new_tokens=6)

    threads = [threading.Thread(target=ask, args=(key,)) for key in asks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for key in asks:
        assert torch.equal(together[key], alone[key]), key
