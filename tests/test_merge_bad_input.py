"""Bad input: a non-zero exit, one line naming the problem, nothing left at or beside --out."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from spectrum.cli import main


def _copy(pair_folder, tmp_path, name):
    folder = tmp_path / name
    shutil.copytree(pair_folder, folder)
    return folder


def _edit_tensor(folder, name, change):
    """Rewrite the shard holding ``name`` with ``change(tensors)`` applied."""
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = folder / index["weight_map"][name]
    tensors = load_file(shard)
    change(tensors)
    save_file(tensors, shard, metadata={"format": "pt"})
    index["weight_map"] = {
        n: f for n, f in index["weight_map"].items() if n in tensors or f != shard.name
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def _reshape(folder):
    name = "model.layers.1.mlp.up_proj.weight"
    _edit_tensor(folder, name, lambda t: t.update({name: torch.zeros(3, 3)}))
    return name


def _drop(folder):
    name = "model.layers.2.self_attn.o_proj.weight"
    _edit_tensor(folder, name, lambda t: t.pop(name))
    return name


def _truncate(folder):
    shard = sorted(folder.glob("*.safetensors"))[2]
    shard.write_bytes(shard.read_bytes()[:-64])
    return shard.name


def _case(tiny_pair, tiny_moe_pair, tmp_path, case):
    """(extra CLI args, text the error must contain) for one kind of bad input."""
    direct, thinking = str(tiny_pair["direct"]), str(tiny_pair["thinking"])
    args = {"--direct": direct, "--thinking": thinking, "--method": "linear", "--lam": "0.5"}
    if case == "shape":
        args["--thinking"] = str(_copy(tiny_pair["thinking"], tmp_path, "t"))
        expect = _reshape(tmp_path / "t")
    elif case == "architecture":
        args["--thinking"], expect = str(tiny_moe_pair["thinking"]), "model_type"
    elif case == "missing_tensor":
        args["--thinking"] = str(_copy(tiny_pair["thinking"], tmp_path, "t"))
        expect = _drop(tmp_path / "t")
    elif case == "corrupt":
        args["--direct"] = str(_copy(tiny_pair["direct"], tmp_path, "d"))
        expect = _truncate(tmp_path / "d")
    elif case == "lam":
        args["--lam"], expect = "1.5", "--allow-extrapolation"
    elif case == "no_base":
        args["--method"], expect = "ties", "needs a base"
    elif case == "nonexistent":
        args["--direct"], expect = str(tmp_path / "no" / "such"), "no such model folder"
    elif case == "vocabulary":
        args["--thinking"] = str(_copy(tiny_pair["thinking"], tmp_path, "t"))
        tokenizer = json.loads((tmp_path / "t" / "tokenizer.json").read_text())
        tokenizer["model"]["vocab"]["zzz"] = 999
        (tmp_path / "t" / "tokenizer.json").write_text(json.dumps(tokenizer))
        expect = "tokenizer vocabularies"
    elif case == "bad_param":
        args["--param"], expect = "alpha=2", "no parameter 'alpha'"
    else:
        raise AssertionError(case)
    return [item for pair in args.items() for item in pair], expect


CASES = [
    "shape", "architecture", "missing_tensor", "corrupt", "lam", "no_base", "nonexistent",
    "vocabulary", "bad_param",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_leaves_nothing(tiny_pair, tiny_moe_pair, tmp_path, case, capsys):
    args, expect = _case(tiny_pair, tiny_moe_pair, tmp_path, case)
    parent = tmp_path / "outputs"
    parent.mkdir()
    assert main(["merge", *args, "--out", str(parent / "merged"), "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spectrum merge: error:")
    assert expect in lines[0]
    assert list(parent.iterdir()) == []


def test_existing_output_folder_is_refused_through_the_real_entry_point(tiny_pair, tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = subprocess.run(
        [sys.executable, "-m", "spectrum", "merge", "--direct", str(tiny_pair["direct"]),
         "--thinking", str(tiny_pair["thinking"]), "--lam", "0.5", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"spectrum merge: error: output folder {out} already exists; pass --force to replace it"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_extrapolation_is_allowed_when_asked(tiny_pair, tmp_path):
    args = ["merge", "--direct", str(tiny_pair["direct"]), "--thinking", str(tiny_pair["thinking"])]
    out = tmp_path / "merged"
    assert main([*args, "--lam", "1.5", "--allow-extrapolation", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "merge_config.json").read_text())["lam"] == 1.5


def test_different_chat_template_is_only_a_warning(tiny_pair, tmp_path, caplog):
    thinking = _copy(tiny_pair["thinking"], tmp_path, "t")
    (thinking / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    args = ["merge", "--direct", str(tiny_pair["direct"]), "--thinking", str(thinking)]
    out = tmp_path / "merged"
    with caplog.at_level("WARNING", logger="spectrum.merge"):
        assert main([*args, "--lam", "0.5", "--out", str(out), "--quiet"]) == 0
    assert any("different chat templates" in record.message for record in caplog.records)
    assert (out / "chat_template.jinja").read_text() == "{{ messages[0]['content'] }}"
