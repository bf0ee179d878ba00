"""The spectrum model against separately merged models, one λ per sequence.

References are built by other code paths: ``LiveMerger.set(method, λ)`` (the method's
merged tensors written into a plain transformers model) and, for a scoped merge, the
offline engine ``merge_checkpoints`` writing a folder that ``from_pretrained`` loads.
Every comparison is float32.

Tolerances: rows at 0 < λ < 1 compute lerp(x·E₀ᵀ, x·E₁ᵀ, λ) where the merged model
computes x·lerp(E₀, E₁, λ)ᵀ; the two differ by float32 rounding only, which after a few
layers stays well under ``ATOL + RTOL·|logit|`` = 1e-4 + 1e-4·|logit| (measured: at most
4.4e-5 with logits up to 17 on the embedded pair, 3e-7 on the tiny random models). Rows at
λ = 0 and λ = 1 must be bit for bit the merged endpoints on the dense models. On Qwen3-MoE
an expert's matmul sees the tokens routed to it from every row, a different count than in
the reference batch, so bit equality is up to the BLAS kernel's choice; it held in every
run here but is only asserted to the same tolerance.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from spectrum.errors import UserError
from spectrum.live import LiveMerger
from spectrum.live.spectrum_model import AFFINE_METHODS, SpectrumModel
from spectrum.merge import MergeConfig, MergeSpec, merge_checkpoints
from spectrum.merge.scope import MergeScope
from spectrum.toy.tiny import save_tiny_pair

LAMS = [0.0, 0.25, 0.5, 0.75, 1.0]
ATOL = RTOL = 1e-4
BF16_ATOL = 2e-2  # logits of these models are ≈ 0.5: a few bfloat16 ulps
PAIR = Path(__file__).resolve().parents[1] / "assets" / "pair"
# Tiny params keep lore's SVDs and twin's sparsification cheap but non-trivial.
PARAMS = {"dare": {"drop_rate": 0.3}, "twin": {"mask_rate": 0.3}, "lore": {"mu": 0.01}}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def embedded_pair():
    return {role: PAIR / role for role in ("base", "direct", "thinking")}


@pytest.fixture(scope="module", params=["embedded", "qwen3", "qwen3_moe"])
def pair(request, embedded_pair):
    fixture = {"embedded": "embedded_pair", "qwen3": "tiny_pair", "qwen3_moe": "tiny_moe_pair"}
    paths = request.getfixturevalue(fixture[request.param])
    return request.param, paths


@pytest.fixture(scope="module")
def live(pair):
    _, paths = pair
    return LiveMerger.load(paths["direct"], paths["thinking"], paths["base"], device="cpu")


def _spectrum(paths, method: str, **kwargs) -> SpectrumModel:
    return SpectrumModel.load(
        paths["direct"],
        paths["thinking"],
        paths["base"],
        method=method,
        params=PARAMS.get(method),
        device="cpu",
        **kwargs,
    )


def _prompts(vocab: int, rows: int, length: int = 10) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    return torch.randint(3, vocab, (rows, length), generator=generator)


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("method", AFFINE_METHODS)
@torch.no_grad()
def test_logits_and_greedy_tokens_match_merged_models(pair, live, method):
    name, paths = pair
    spectrum = _spectrum(paths, method)
    ids = _prompts(spectrum.model.config.vocab_size, len(LAMS))
    logits = spectrum(ids, LAMS).logits
    tokens = spectrum.generate(ids, LAMS, do_sample=False, max_new_tokens=6)
    for row, lam in enumerate(LAMS):
        live.set(MergeSpec(method, lam, PARAMS.get(method) or {}))
        want = live.model(ids).logits
        if lam in (0.0, 1.0) and name != "qwen3_moe":
            assert torch.equal(logits[row], want[row]), f"{method} λ={lam} is not the endpoint"
        else:
            _close(logits[row], want[row])
        merged = live.model.generate(ids, do_sample=False, max_new_tokens=6)
        assert torch.equal(tokens[row], merged[row]), f"{name} {method} λ={lam} greedy differs"


@torch.no_grad()
def test_linear_endpoints_are_the_parents(embedded_pair):
    spectrum = _spectrum(embedded_pair, "linear")
    ids = _prompts(spectrum.model.config.vocab_size, 4)
    logits = spectrum(ids, [0.0, 1.0, 1.0, 0.0]).logits
    for role, rows in (("direct", [0, 3]), ("thinking", [1, 2])):
        parent = AutoModelForCausalLM.from_pretrained(embedded_pair[role]).eval()
        assert torch.equal(logits[rows], parent(ids).logits[rows])


@torch.no_grad()
def test_scope_and_schedule_match_the_offline_merge(tiny_pair, tmp_path):
    scope = MergeScope(layers="1-3", modules=("attn", "mlp", "norm"), lam_schedule=(0.2, 0.9))
    spectrum = _spectrum(tiny_pair, "task_arithmetic", scope=scope)
    ids = _prompts(spectrum.model.config.vocab_size, 3)
    lams = [0.0, 0.4, 1.0]
    logits = spectrum(ids, lams).logits
    for row, lam in enumerate(lams):
        config = MergeConfig(
            direct=str(tiny_pair["direct"]),
            thinking=str(tiny_pair["thinking"]),
            base=str(tiny_pair["base"]),
            spec=MergeSpec("task_arithmetic", lam, **scope.describe()),
            device="cpu",
        )
        out = merge_checkpoints(config, tmp_path / f"merged-{lam}", progress=False)
        merged = AutoModelForCausalLM.from_pretrained(out).eval()
        _close(logits[row], merged(ids).logits[row])
    # Out-of-scope modules stay plain, one copy: layer 0 and the embeddings have no E₁.
    buffers = {name for name, _ in spectrum.model.named_buffers()}
    assert not any(".layers.0." in name or "embed" in name for name in buffers)
    assert any(".layers.1.self_attn.q_proj.weight_at_one" in name for name in buffers)


@torch.no_grad()
def test_left_padding_and_return_sequences_follow_each_row(tiny_pair):
    spectrum = _spectrum(tiny_pair, "linear")
    live = LiveMerger.load(tiny_pair["direct"], tiny_pair["thinking"], device="cpu")
    tokenizer = spectrum.tokenizer
    tokenizer.padding_side = "left"
    prompts = ["a", "the longest prompt here", "mid size"]
    lams = [0.3, 1.0, 0.0]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    assert (batch["attention_mask"] == 0).any()  # left padding really happens
    settings = dict(max_new_tokens=6, do_sample=True, top_k=1, num_return_sequences=2)
    out = spectrum.generate(
        batch["input_ids"], lams, attention_mask=batch["attention_mask"], **settings
    )
    assert out.shape[0] == 2 * len(prompts)
    width = batch["input_ids"].shape[1]
    for row, (prompt, lam) in enumerate(zip(prompts, lams, strict=True)):
        live.set(MergeSpec("linear", lam))
        alone = tokenizer([prompt], return_tensors="pt", add_special_tokens=False)["input_ids"]
        want = live.model.generate(alone, do_sample=False, max_new_tokens=6)[0, alone.shape[1] :]
        # A row that stopped early is right-padded in the batch: pad the lone one alike.
        want = torch.nn.functional.pad(want, (0, 6 - len(want)), value=tokenizer.pad_token_id)
        for copy in (2 * row, 2 * row + 1):  # num_return_sequences rows keep their λ
            assert torch.equal(out[copy, width:], want), f"{prompt!r} at λ={lam}"


@torch.no_grad()
def test_seeded_sampling_is_reproducible_and_threads_keep_their_own_lams(tiny_moe_pair):
    spectrum = _spectrum(tiny_moe_pair, "linear")
    ids = _prompts(spectrum.model.config.vocab_size, 4)
    requests = {"a": [0.0, 0.2, 0.6, 1.0], "b": [1.0, 0.9, 0.5, 0.1]}

    def sample(lams, seed=3):
        generator_state = torch.random.fork_rng()
        with generator_state:
            torch.manual_seed(seed)
            return spectrum.generate(ids, lams, do_sample=True, max_new_tokens=8, top_k=0)

    alone = {key: sample(lams) for key, lams in requests.items()}
    assert torch.equal(sample(requests["a"]), alone["a"])
    assert not torch.equal(alone["a"], alone["b"])
    # Concurrent greedy calls: each thread's λs, nothing shared between the calls.
    greedy = {
        k: spectrum.generate(ids, v, do_sample=False, max_new_tokens=8) for k, v in requests.items()
    }
    got: dict[str, torch.Tensor] = {}

    def run(key):
        for _ in range(3):
            got[key] = spectrum.generate(ids, requests[key], do_sample=False, max_new_tokens=8)

    threads = [threading.Thread(target=run, args=(key,)) for key in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(torch.equal(got[key], greedy[key]) for key in requests)


def test_bad_requests_are_user_errors(embedded_pair):
    with pytest.raises(UserError, match="not affine.*linear, task_arithmetic"):
        _spectrum(embedded_pair, "slerp")
    spectrum = _spectrum(embedded_pair, "linear")
    ids = _prompts(spectrum.model.config.vocab_size, 2)
    with pytest.raises(UserError, match="2 sequences"):
        spectrum(ids, [0.5])
    with pytest.raises(UserError, match="outside"):
        spectrum(ids, [0.5, 1.5])
    with pytest.raises(RuntimeError, match="without λs"):
        spectrum.model(ids)


@torch.no_grad()
def test_bfloat16_pair_keeps_its_dtype_and_exact_endpoints(tmp_path):
    pair = save_tiny_pair(tmp_path, "qwen3", seed=3, dtype=torch.bfloat16)
    spectrum = _spectrum(pair, "linear")
    assert {p.dtype for p in spectrum.model.parameters()} == {torch.bfloat16}
    ids = _prompts(spectrum.model.config.vocab_size, 3)
    logits = spectrum(ids, [0.0, 0.5, 1.0]).logits
    for row, role in ((0, "direct"), (2, "thinking")):
        parent = AutoModelForCausalLM.from_pretrained(pair[role], dtype="auto").eval()
        assert torch.equal(logits[row], parent(ids).logits[row])
    live = LiveMerger.load(pair["direct"], pair["thinking"], device="cpu")
    live.set(MergeSpec("linear", 0.5))
    # bfloat16 keeps 8 bits: the merged model rounds θ(0.5), the spectrum model its outputs.
    torch.testing.assert_close(logits[1], live.model(ids).logits[1], atol=BF16_ATOL, rtol=0.0)
