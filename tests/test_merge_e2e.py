"""End to end: every registered method through the CLI on tiny Qwen3 and Qwen3-MoE pairs."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from spectrum.cli import main
from spectrum.merge import merge_tensors
from spectrum.methods import REGISTRY

LAM = 0.7


def _read_folder(folder) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny tensors gain nothing from threads, and on a shared CI core they lose a lot.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def parents(tiny_pair, tiny_moe_pair):
    pairs = {"qwen3": tiny_pair, "qwen3_moe": tiny_moe_pair}
    return {
        arch: {"paths": pair, "tensors": {r: _read_folder(p) for r, p in pair.items()}}
        for arch, pair in pairs.items()
    }


@pytest.mark.parametrize("arch", ["qwen3", "qwen3_moe"])
@pytest.mark.parametrize("method", list(REGISTRY))
def test_cli_merge_loads_generates_and_equals_in_memory_api(parents, arch, method, tmp_path):
    paths, tensors = parents[arch]["paths"], parents[arch]["tensors"]
    assert len(list(paths["direct"].glob("*.safetensors"))) >= 2
    base = ["--base", str(paths["base"])] if REGISTRY[method].needs_base else []
    out = tmp_path / "merged"
    args = ["merge", "--direct", str(paths["direct"]), "--thinking", str(paths["thinking"]), *base]
    args += ["--method", method, "--lam", str(LAM), "--seed", "3", "--out", str(out), "--quiet"]
    assert main(args) == 0

    expected = merge_tensors(
        tensors["direct"],
        tensors["thinking"],
        tensors["base"] if base else None,
        method=method,
        lam=LAM,
        seed=3,
    )
    written = _read_folder(out)
    assert sorted(written) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(written[name], tensor), name

    model = AutoModelForCausalLM.from_pretrained(out)
    state = model.state_dict()
    if arch == "qwen3":  # MoE experts are fused on load; the dense names map one to one
        for name, tensor in written.items():
            assert torch.equal(state[name], tensor), name
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "2+3"}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    generated = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > ids.shape[1]
