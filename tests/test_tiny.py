import json

import torch
from transformers import AutoModelForCausalLM


def test_tiny_pairs_are_sharded_loadable_and_close(tiny_pair, tiny_moe_pair):
    for pair in (tiny_pair, tiny_moe_pair):
        index = json.loads((pair["direct"] / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) >= 2
        direct = AutoModelForCausalLM.from_pretrained(pair["direct"])
        thinking = AutoModelForCausalLM.from_pretrained(pair["thinking"])
        d, t = direct.state_dict(), thinking.state_dict()
        assert d.keys() == t.keys()
        distance = sum((t[k] - d[k]).norm() ** 2 for k in d) ** 0.5
        norm = sum(d[k].norm() ** 2 for k in d) ** 0.5
        assert 0 < distance / norm < 0.2
        out = direct.generate(torch.tensor([[1, 5, 6]]), max_new_tokens=4, do_sample=False)
        assert out.shape == (1, 7)
