"""What only a CUDA GPU can check; skipped elsewhere (bench/gpu_check.sh runs them).

* the live merger on the GPU under every memory policy: ``resident``, ``streamed`` and
  ``disk`` agree byte for byte (same kernels), and match the CPU merge to float32 rounding;
* the ZeroGPU path: the dashboard's handlers under ``spaces.GPU`` re-merge and chat;
* vLLM's GPU build (run from its own venv): in-place reload, then greedy decoding equal to
  transformers at every merge; a MoE pair is either reloaded exactly or refused.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from spectrum.merge import MergeSpec

pytestmark = pytest.mark.cuda
HAS_VLLM = importlib.util.find_spec("vllm") is not None
METHODS = ("linear", "slerp", "ties", "topk_replace", "emr")


def params_of(merger) -> dict[str, torch.Tensor]:
    return {name: t.detach().float().cpu() for name, t in merger.model.state_dict().items()}


@pytest.mark.skipif(HAS_VLLM, reason="the vLLM venv runs only the vLLM checks")
def test_live_policies_on_cuda_agree(tiny_moe_pair):
    from spectrum.live import LiveMerger

    pair = (tiny_moe_pair["direct"], tiny_moe_pair["thinking"], tiny_moe_pair["base"])
    cpu = LiveMerger.load(*pair, device="cpu")
    gpus = {p: LiveMerger.load(*pair, device="cuda", policy=p) for p in ("resident", "streamed")}
    gpus["disk"] = LiveMerger.load(*pair, device="cuda", policy="disk")
    gpus["disk"].disk_resident_bytes = 50_000  # part kept on the GPU, part re-read
    for method in METHODS:
        for lam in (0.3, 0.85):
            cpu.set(method, lam)
            expected = params_of(cpu)
            got = {}
            for policy, merger in gpus.items():
                merger.set(MergeSpec(method, lam))
                got[policy] = params_of(merger)
            for policy in ("streamed", "disk"):
                for name, tensor in got["resident"].items():
                    assert torch.equal(got[policy][name], tensor), (method, lam, policy, name)
            for name, tensor in got["resident"].items():
                torch.testing.assert_close(tensor, expected[name], rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(HAS_VLLM, reason="the vLLM venv runs only the vLLM checks")
def test_zerogpu_handlers_run_on_cuda(tiny_pair, tmp_path):
    spaces = pytest.importorskip("spaces")
    from spectrum.dashboard import Dashboard, MergeSpec
    from spectrum.generate.batch import DecodingSettings
    from ui.common import gpu

    assert gpu is spaces.GPU  # the dashboard's handlers are wrapped by ZeroGPU's decorator
    dashboard = Dashboard(
        tiny_pair["direct"], tiny_pair["thinking"], device="cuda", db=tmp_path / "v.duckdb"
    )
    request = MergeSpec("slerp", 0.4)

    @gpu
    def remerge_and_chat():
        dashboard.set_merge(request)
        decoding = {c: DecodingSettings.for_model(c, max_new_tokens=4) for c in
                    ("direct", "merged", "thinking")}  # fmt: skip
        return list(dashboard.chat([], "hi", request, decoding))[-1]

    last = remerge_and_chat()
    assert last["merged"].merge.method == "slerp" and last["merged"].merge.lam == 0.4
    assert dashboard.merger.model.device.type == "cuda"


@pytest.mark.skipif(not HAS_VLLM, reason="run from the vLLM venv (bench/gpu_check.sh)")
def test_vllm_gpu_reload_decodes_like_transformers(tmp_path):
    from test_live_vllm import PROMPTS, save_pair, transformers_greedy
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from spectrum.live import LiveMerger
    from spectrum.live.vllm import VllmLiveMerger

    pair = save_pair(tmp_path)
    parents = (pair["direct"], pair["thinking"], pair["base"])
    engine = VllmLiveMerger.load(*parents, device="cuda", dtype="float32", max_model_len=128,
                                 enforce_eager=True, gpu_memory_utilization=0.3)  # fmt: skip
    reference = LiveMerger.load(*parents, device="cuda")
    sampling = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in PROMPTS]
    for method, lam in (("linear", 0.0), ("linear", 1.0), ("ties", 0.6), ("linear", 0.35)):
        engine.set(MergeSpec(method, lam))
        reference.set(MergeSpec(method, lam))
        outputs, _ = engine.generate(prompts, sampling)
        for prompt, output in zip(PROMPTS, outputs, strict=True):
            tokens, _ = transformers_greedy(reference.model, list(prompt))
            assert list(output.outputs[0].token_ids) == tokens, (method, lam, prompt)


@pytest.mark.skipif(not HAS_VLLM, reason="run from the vLLM venv (bench/gpu_check.sh)")
def test_vllm_gpu_moe_reloads_exactly_or_is_refused(tmp_path):
    from test_live_vllm import save_pair

    from spectrum.errors import UserError
    from spectrum.live.vllm import VllmLiveMerger

    pair = save_pair(tmp_path, "qwen3_moe")
    try:
        engine = VllmLiveMerger.load(pair["direct"], pair["thinking"], device="cuda",
                                     dtype="float32", max_model_len=128, enforce_eager=True,
                                     gpu_memory_utilization=0.3)  # fmt: skip
    except UserError as error:
        assert "reload_weights does not restore" in str(error)
        print(f"vLLM GPU MoE: refused ({error})")
        return
    assert engine.current.version == 1  # the load-time round trip restored every weight
    print("vLLM GPU MoE: in-place reload round trip exact")
