"""Live re-merge on transformers: in place, exact, drift-free, consistent under races.

Expected values come from outside the code under test: the offline engine
(``spectrum.merge``) over tensors read here with safetensors, formulas written in this file,
and transformers' own reverse weight conversion to read the model back in checkpoint names.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from transformers.core_model_loading import revert_weight_conversion

from spectrum.errors import UserError
from spectrum.live import LiveMerger
from spectrum.live.memory import choose_policy, plan_memory
from spectrum.merge import MergeConfig, MergeSpec, merge_checkpoints, merge_tensors
from spectrum.methods import REGISTRY, MergeMethod
from spectrum.toy.tiny import save_random_model, save_tiny_pair, tiny_config
from spectrum.toy.tokenizer import build_char_tokenizer

torch.set_num_threads(1)
PROMPT = "<|im_start|>user\nwhat is 12+7?<|im_end|>\n<|im_start|>assistant\n"


def read_folder(path: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(Path(path).glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def model_in_checkpoint_names(model) -> dict[str, torch.Tensor]:
    """The model's weights under checkpoint names, by transformers' own reverse conversion."""
    state = {name: param.data for name, param in model.named_parameters()}
    return {name: t.clone() for name, t in revert_weight_conversion(model, state).items()}


def assert_bytes_equal(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    for name in expected:
        assert actual[name].dtype == expected[name].dtype, name
        assert torch.equal(actual[name], expected[name]), name


def greedy(model, tokenizer, n_tokens: int = 12) -> list[int]:
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=n_tokens, do_sample=False, pad_token_id=0)
    return out[0, ids.shape[1] :].tolist()


@pytest.fixture(scope="module")
def parents(tiny_pair):
    return {role: read_folder(path) for role, path in tiny_pair.items()}


@pytest.fixture(scope="module")
def merger(tiny_pair):
    return LiveMerger.load(
        tiny_pair["direct"], tiny_pair["thinking"], tiny_pair["base"], device="cpu"
    )


@pytest.mark.parametrize("method", list(REGISTRY))
def test_every_method_equals_the_offline_merge(merger, parents, method):
    pointers = [param.data_ptr() for param in merger.model.parameters()]
    merge = merger.set(MergeSpec(method, 0.3, seed=7))
    assert (merge.spec.method, merge.spec.lam, merge.spec.seed) == (method, 0.3, 7)
    expected = merge_tensors(
        parents["direct"], parents["thinking"], parents["base"], method=method, lam=0.3, seed=7
    )
    # Exact for every method: linear's live path and the engine both use one torch.lerp.
    assert_bytes_equal(model_in_checkpoint_names(merger.model), expected)
    # In place: every parameter still lives in the storage it was loaded into.
    assert [param.data_ptr() for param in merger.model.parameters()] == pointers


def test_linear_equals_the_spectrum_merge_folder_and_the_formula(merger, tiny_pair, tmp_path):
    lam = 0.65
    merger.set(MergeSpec("linear", lam))
    out = merge_checkpoints(
        MergeConfig(
            direct=str(tiny_pair["direct"]),
            thinking=str(tiny_pair["thinking"]),
            spec=MergeSpec("linear", lam),
        ),
        tmp_path / "merged",
        progress=False,
    )
    offline = read_folder(out)
    direct, thinking = read_folder(tiny_pair["direct"]), read_folder(tiny_pair["thinking"])
    actual = model_in_checkpoint_names(merger.model)
    for name, tensor in offline.items():
        exact = (1 - lam) * direct[name].double() + lam * thinking[name].double()
        torch.testing.assert_close(actual[name], tensor, rtol=2e-6, atol=1e-7)
        torch.testing.assert_close(actual[name].double(), exact, rtol=2e-6, atol=1e-7)


def test_slerp_matches_the_textbook_formula(merger, parents):
    lam = 0.4
    merger.set(MergeSpec("slerp", lam))
    actual = model_in_checkpoint_names(merger.model)
    for name, direct in parents["direct"].items():
        a, b = direct.double().flatten(), parents["thinking"][name].double().flatten()
        cos = torch.dot(a, b) / (a.norm() * b.norm())
        if cos.abs() > 1 - 1e-6:
            expected = (1 - lam) * a + lam * b
        else:
            omega = torch.arccos(cos)
            sin = torch.sin(omega)
            expected = torch.sin((1 - lam) * omega) / sin * a + torch.sin(lam * omega) / sin * b
        torch.testing.assert_close(actual[name].double().flatten(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["linear", "ties", "topk_replace", "dare"])
def test_moving_lam_there_and_back_leaves_no_drift(merger, method):
    merger.set(MergeSpec(method, 0.3))
    once = model_in_checkpoint_names(merger.model)
    merger.set(MergeSpec(method, 0.9))
    assert not torch.equal(
        model_in_checkpoint_names(merger.model)["lm_head.weight"], once["lm_head.weight"]
    )
    merger.set(MergeSpec(method, 0.3))
    assert_bytes_equal(model_in_checkpoint_names(merger.model), once)


def test_switching_methods_back_and_forth_leaves_no_drift(merger):
    merger.set(MergeSpec("twin", 0.3))
    once = model_in_checkpoint_names(merger.model)
    merger.set(MergeSpec("slerp", 0.8))
    merger.set(MergeSpec("emr", 0.5))
    merger.set(MergeSpec("twin", 0.3))
    assert_bytes_equal(model_in_checkpoint_names(merger.model), once)


INTERPOLATING = [name for name, method in REGISTRY.items() if method.interpolates]


@pytest.mark.parametrize("method", INTERPOLATING)
def test_endpoints_generate_like_the_parents_loaded_on_their_own(
    merger, tiny_pair, parents, method
):
    for lam, role in ((0.0, "direct"), (1.0, "thinking")):
        merger.set(MergeSpec(method, lam))
        # Bit for bit the parent's weights...
        assert_bytes_equal(model_in_checkpoint_names(merger.model), parents[role])
        alone = AutoModelForCausalLM.from_pretrained(tiny_pair[role], dtype=torch.float32)
        # ...so greedy decoding matches the parent loaded alone, token for token.
        assert greedy(merger.model, merger.tokenizer) == greedy(alone, merger.tokenizer)


@pytest.mark.parametrize("method", ["ties", "topk_replace", "emr"])
def test_scope_and_schedule_equal_the_offline_merge(merger, parents, method):
    # topk_replace and emr have whole-model statistics: over the in-scope tensors only.
    cases = [
        dict(),
        dict(layers="1-2", modules=("attn", "norm")),
        dict(lam_schedule=(0.0, 1.0)),
        dict(layers="0,3", lam_schedule=(0.2, 0.9)),
        dict(),
    ]
    for case in cases:
        merge = merger.set(MergeSpec(method, 0.6, **case))
        assert merge.spec.layers == case.get("layers")
        expected = merge_tensors(
            parents["direct"],
            parents["thinking"],
            parents["base"],
            method=method,
            lam=0.6,
            **case,
        )
        assert_bytes_equal(model_in_checkpoint_names(merger.model), expected)


@pytest.mark.parametrize("method", ["linear", "ties", "topk_replace", "emr"])
def test_streamed_policy_gives_the_same_bytes_as_resident(tiny_pair, merger, method):
    streamed = LiveMerger.load(
        tiny_pair["direct"],
        tiny_pair["thinking"],
        tiny_pair["base"],
        device="cpu",
        policy="streamed",
        chunk_bytes=64 * 1024,  # many chunks even for the tiny model
    )
    for lam in (0.25, 0.75):
        merger.set(MergeSpec(method, lam))
        streamed.set(MergeSpec(method, lam))
        assert streamed.memory.policy == "streamed" and merger.memory.policy == "resident"
        assert "streamed on cpu" in streamed.memory.describe()
        assert_bytes_equal(
            model_in_checkpoint_names(streamed.model), model_in_checkpoint_names(merger.model)
        )


def test_memory_plan_compares_prepared_bytes_with_free_memory():
    gib = 2**30
    # 30B-A3B-sized prepared tensors against an 80 GB GPU's free memory: streamed.
    assert choose_policy("auto", 120 * gib, 70 * gib) == "streamed"
    assert choose_policy("auto", 16 * gib, 70 * gib) == "resident"
    assert choose_policy("auto", 69 * gib, 70 * gib) == "streamed"  # no room for activations
    assert choose_policy("resident", 120 * gib, 70 * gib) == "resident"  # the caller's call
    cpu = torch.device("cpu")
    assert plan_memory(10**12, cpu).policy == "resident"  # host and device are one memory
    assert plan_memory(10, cpu, "streamed").policy == "streamed"
    with pytest.raises(UserError, match="unknown memory policy"):
        plan_memory(10, cpu, "swap")


def test_set_inside_the_same_threads_session_is_refused(merger):
    with merger.session() as merge:
        with pytest.raises(RuntimeError, match="session"):
            merger.set(MergeSpec("linear", 0.5))
        assert merger.current == merge
    assert merger.set(MergeSpec("linear", 0.5)).version == merge.version + 1


def test_tied_embeddings_stay_tied(tmp_path):
    config = tiny_config(vocab_size=len(build_char_tokenizer()), tie_word_embeddings=True)
    base = save_random_model(tmp_path / "base", config, 0)
    direct = save_random_model(tmp_path / "direct", config, 1, like=base)
    thinking = save_random_model(tmp_path / "thinking", config, 2, like=base)
    live = LiveMerger.load(direct, thinking, device="cpu")
    embed, head = live.model.model.embed_tokens.weight, live.model.lm_head.weight
    pointer = embed.data_ptr()
    live.set(MergeSpec("slerp", 0.5))
    assert embed.data_ptr() == head.data_ptr() == pointer
    expected = merge_tensors(read_folder(direct), read_folder(thinking), method="slerp", lam=0.5)
    assert torch.equal(head, expected["model.embed_tokens.weight"])


@pytest.mark.parametrize("method", ["slerp", "ties", "linear"])
def test_moe_experts_merge_per_checkpoint_tensor(tiny_moe_pair, method):
    """Fused experts (``gate_up_proj``) are merged per expert tensor, as the offline merge does."""
    roles = ("direct", "thinking", "base")
    live = LiveMerger.load(*(tiny_moe_pair[role] for role in roles), device="cpu")
    assert any("gate_up_proj" in name for name, _ in live.model.named_parameters())
    live.set(MergeSpec(method, 0.4))
    direct, thinking, base = (read_folder(tiny_moe_pair[role]) for role in roles)
    expected = merge_tensors(direct, thinking, base, method=method, lam=0.4)
    actual = model_in_checkpoint_names(live.model)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=2e-6, atol=1e-7)
    live.set(MergeSpec("linear", 1.0))
    alone = AutoModelForCausalLM.from_pretrained(tiny_moe_pair["thinking"], dtype=torch.float32)
    for (name, param), (_, reference) in zip(
        live.model.named_parameters(), alone.named_parameters(), strict=True
    ):
        assert torch.equal(param, reference), name


def test_bad_input_is_refused_and_leaves_the_weights_alone(merger, tiny_pair):
    merge = merger.set(MergeSpec("linear", 0.5))
    before = model_in_checkpoint_names(merger.model)
    bad_calls = [
        (dict(method="linear", lam=1.5), "outside"),
        (dict(method="nope", lam=0.5), "unknown merge method"),
        (dict(method="ties", lam=0.5, params={"density": 5.0}), "density"),
        (dict(method="slerp", lam=0.5, params={"k": 1}), "no parameter"),
        (dict(method="linear", lam=0.5, layers="2-9"), "layer"),
        (dict(method="linear", lam=0.5, modules=("ffn",)), "module"),
    ]
    for call, message in bad_calls:
        with pytest.raises(UserError, match=message):
            merger.set(MergeSpec(**call))
    assert merger.current == merge
    assert_bytes_equal(model_in_checkpoint_names(merger.model), before)
    no_base = LiveMerger.load(tiny_pair["direct"], tiny_pair["thinking"], device="cpu")
    with pytest.raises(UserError, match="base"):
        no_base.set(MergeSpec("task_arithmetic", 0.5))
    with pytest.raises(UserError, match="memory policy"):
        LiveMerger.load(tiny_pair["direct"], tiny_pair["thinking"], policy="swap")
    with pytest.raises(UserError, match="no such model folder"):
        LiveMerger.load(tiny_pair["direct"], tiny_pair["direct"].parent / "missing")


def test_a_write_that_fails_midway_leaves_the_direct_parent(merger, parents, monkeypatch):
    """A method whose apply fails on the 20th tensor (a real method, registered for the
    test): the model must not keep the half-written mixture; θ_D is put back, reported."""
    calls = []

    def failing_apply(prepared, lam, params, stats):
        calls.append(1)
        if len(calls) == 20:
            raise RuntimeError("out of memory, say")
        return prepared["direct"] + lam * (prepared["thinking"] - prepared["direct"])

    linear = REGISTRY["linear"]
    method = MergeMethod("failing", "fails midway", linear.prepare, failing_apply)
    monkeypatch.setitem(REGISTRY, "failing", method)
    before = merger.set(MergeSpec("slerp", 0.7))
    with pytest.raises(RuntimeError, match="out of memory"):
        merger.set(MergeSpec("failing", 0.5))
    assert len(calls) == 20
    assert (merger.current.spec.method, merger.current.spec.lam) == ("linear", 0.0)
    assert merger.current.version == before.version + 1
    assert_bytes_equal(model_in_checkpoint_names(merger.model), parents["direct"])


def test_a_generation_racing_set_runs_on_one_version_only(merger):
    """Generations run while another thread keeps calling set(); none sees a mixture.

    A forward pre-hook records, at every decoding step, the merger's version and a
    fingerprint of the weights; within one generation both must stay constant and equal
    the merge the session reported, and the tokens must equal that λ's own greedy output.
    """
    lams = (0.0, 1.0)
    reference = {}
    for lam in lams:
        merger.set(MergeSpec("linear", lam))
        reference[lam] = greedy(merger.model, merger.tokenizer)
    assert reference[0.0] != reference[1.0]
    weight = merger.model.model.layers[0].self_attn.q_proj.weight
    fingerprints = {}
    for lam in lams:
        merger.set(MergeSpec("linear", lam))
        fingerprints[lam] = weight.sum().item()
    seen: list[tuple[int, float]] = []
    hook = merger.model.register_forward_pre_hook(
        lambda module, args: seen.append((merger.current.version, weight.sum().item()))
    )
    stop = threading.Event()
    setter_calls = []

    def keep_setting():
        i = 0
        while not stop.is_set():
            setter_calls.append(merger.set(MergeSpec("linear", lams[i % 2])).version)
            i += 1
            time.sleep(0.001)  # locks are not fair: give the generating thread its turn

    setter = threading.Thread(target=keep_setting)
    setter.start()
    try:
        for _ in range(8):
            seen.clear()
            with merger.session() as merge:
                tokens = greedy(merger.model, merger.tokenizer)
            assert len(seen) >= 2
            assert {version for version, _ in seen} == {merge.version}
            assert {fingerprint for _, fingerprint in seen} == {fingerprints[merge.spec.lam]}
            assert tokens == reference[merge.spec.lam]
    finally:
        stop.set()
        setter.join()
        hook.remove()
    assert len(setter_calls) >= 2  # set() really ran between the generations


@pytest.fixture(scope="module")
def bf16_pair(tmp_path_factory):
    """The real checkpoints' dtype: the linear writer lerps in bf16 storage directly."""
    root = tmp_path_factory.mktemp("tiny_bf16")
    return save_tiny_pair(root, "qwen3", seed=3, dtype=torch.bfloat16)


@pytest.mark.parametrize("method", ["linear", "slerp", "ties"])
def test_bf16_parents_equal_the_offline_merge(bf16_pair, method):
    live = LiveMerger.load(
        bf16_pair["direct"], bf16_pair["thinking"], bf16_pair["base"], device="cpu"
    )
    live.set(MergeSpec(method, 0.3))
    direct, thinking, base = (
        read_folder(bf16_pair[role]) for role in ("direct", "thinking", "base")
    )
    expected = merge_tensors(direct, thinking, base, method=method, lam=0.3)
    actual = model_in_checkpoint_names(live.model)
    if method != "linear":
        assert_bytes_equal(actual, expected)
        return
    # Both compute in float32 and round to bf16 once; the float32 values differ in their
    # last bits (lerp vs two products), which moves a rounding only on an exact bf16 tie.
    for name in expected:
        assert actual[name].dtype == torch.bfloat16
        gap = (actual[name].float() - expected[name].float()).abs()
        ulp = expected[name].float().abs() * 2**-7
        assert bool((gap <= ulp).all()), name
        assert (gap > 0).float().mean().item() < 1e-3, name


def test_a_bf16_model_from_float32_parents_takes_the_rounded_merge(tiny_pair, parents):
    live = LiveMerger.load(
        tiny_pair["direct"],
        tiny_pair["thinking"],
        tiny_pair["base"],
        device="cpu",
        dtype=torch.bfloat16,
    )
    assert next(live.model.parameters()).dtype == torch.bfloat16
    for method in ("ties", "linear"):
        live.set(MergeSpec(method, 0.45))
        expected = merge_tensors(
            parents["direct"], parents["thinking"], parents["base"], method=method, lam=0.45
        )
        actual = model_in_checkpoint_names(live.model)
        for name in expected:
            rounded = expected[name].to(torch.bfloat16)
            if method == "ties":
                assert torch.equal(actual[name], rounded), name
            else:
                gap = (actual[name].float() - rounded.float()).abs()
                assert bool((gap <= rounded.float().abs() * 2**-7).all()), name
