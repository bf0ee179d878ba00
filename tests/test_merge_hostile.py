"""Hostile input to `spectrum merge` (issue #10): real files, real processes.

Each test is one probe: what must be refused, with one line and a non-zero exit, and what
must survive byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from spectrum.errors import UserError
from spectrum.live import LiveMerger
from spectrum.live.spectrum_model import SpectrumModel
from spectrum.merge import MergeConfig, MergeSpec, merge_checkpoints
from spectrum.weights.output import MARKER, SHIPPED_ASSETS

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def spectrum(*args: str, limit_fsize: int | None = None) -> subprocess.CompletedProcess:
    """`python -m spectrum ...` in its own process (optionally with a file-size limit)."""
    prefix = []
    if limit_fsize is not None:
        code = (
            "import resource, runpy, sys; "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_fsize}, {limit_fsize})); "
            "sys.argv = ['spectrum', *sys.argv[1:]]; "
            "runpy.run_module('spectrum', run_name='__main__')"
        )
        prefix = ["-c", code]
    else:
        prefix = ["-m", "spectrum"]
    return subprocess.run(
        [sys.executable, *prefix, *args], env=ENV, capture_output=True, text=True, timeout=300
    )


def merge(direct: Path, thinking: Path, out: Path, *extra: str, **kwargs):
    args = ["merge", "--direct", str(direct), "--thinking", str(thinking), "--out", str(out)]
    return spectrum(*args, "--quiet", *extra, **kwargs)


def one_line_error(done: subprocess.CompletedProcess, *expected: str) -> str:
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spectrum merge: error: "), done.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path → sha256): equal means byte for byte."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def no_leftovers(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))


@pytest.fixture
def nest(tiny_pair, tmp_path):
    """A folder holding both parents and a file of the user's."""
    folder = tmp_path / "work"
    for role in ("direct", "thinking"):
        shutil.copytree(tiny_pair[role], folder / role)
    (folder / "notes.txt").write_text("mine")
    return folder


def test_force_never_replaces_a_folder_holding_the_parents(nest):
    before = snapshot(nest)
    done = merge(nest / "direct", nest / "thinking", nest, "--force")
    one_line_error(done, "contains the direct parent")
    assert snapshot(nest) == before


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("parent itself", "is the thinking parent"),
        ("inside a parent", "lies inside the thinking parent"),
        ("shipped assets", "is the shipped assets folder"),
    ],
)
def test_force_never_targets_a_parent_or_the_shipped_assets(nest, where, expected):
    out = {
        "parent itself": nest / "thinking",
        "inside a parent": nest / "thinking" / "sub",
        "shipped assets": SHIPPED_ASSETS,
    }[where]
    before, shipped = snapshot(nest), snapshot(SHIPPED_ASSETS)
    one_line_error(merge(nest / "direct", nest / "thinking", out, "--force"), expected)
    assert snapshot(nest) == before and snapshot(SHIPPED_ASSETS) == shipped


def test_force_replaces_only_an_untouched_output_of_this_tool(tiny_pair, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "model.safetensors").write_bytes(b"someone else's")
    done = merge(tiny_pair["direct"], tiny_pair["thinking"], foreign, "--force")
    one_line_error(done, "not written by this tool")
    assert (foreign / "model.safetensors").read_bytes() == b"someone else's"

    out = tmp_path / "merged"
    assert merge(tiny_pair["direct"], tiny_pair["thinking"], out).returncode == 0
    assert MARKER in os.listdir(out)
    (out / "my_eval.csv").write_text("added by hand")
    one_line_error(merge(tiny_pair["direct"], tiny_pair["thinking"], out, "--force"), "my_eval.csv")
    assert (out / "my_eval.csv").read_text() == "added by hand"
    (out / "my_eval.csv").unlink()
    done = merge(tiny_pair["direct"], tiny_pair["thinking"], out, "--force", "--lam", "0.25")
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "merge_config.json").read_text())["lam"] == 0.25


def _pickle_copy(pair_folder: Path, folder: Path, payload: bytes | None = None) -> Path:
    """The parent as one pytorch_model.bin (or ``payload`` bytes under that name)."""
    folder.mkdir()
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(pair_folder.iterdir()):
        if path.suffix == ".safetensors":
            tensors.update(load_file(path))
        elif not path.name.endswith("index.json"):
            shutil.copyfile(path, folder / path.name)
    if payload is None:
        torch.save(tensors, folder / "pytorch_model.bin")
    else:
        (folder / "pytorch_model.bin").write_bytes(payload)
    return folder


def test_garbage_pickle_is_refused_by_its_name_never_parsed(tiny_pair, tmp_path):
    garbage = _pickle_copy(tiny_pair["thinking"], tmp_path / "garbage", os.urandom(4096))
    out = tmp_path / "out"
    done = merge(tiny_pair["direct"], garbage, out)
    # Parsed, garbage would fail as "cannot read pickle checkpoint"; refused, it never was.
    line = one_line_error(done, "pytorch_model.bin", "--allow-pickle")
    assert "cannot read" not in line
    no_leftovers(out)
    for load in (
        lambda: LiveMerger.load(tiny_pair["direct"], garbage, device="cpu"),
        lambda: merge_checkpoints(MergeConfig(str(tiny_pair["direct"]), str(garbage)), out),
    ):
        with pytest.raises(UserError, match="pickle weights") as refused:
            load()
        assert "--" not in str(refused.value)  # the flag is the CLI's to add


def test_allowed_pickle_is_loaded_once_with_weights_only(tiny_pair, tmp_path, monkeypatch):
    pickled = _pickle_copy(tiny_pair["thinking"], tmp_path / "pickled")
    calls: list[dict] = []
    real_load = torch.load

    def counting_load(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    config = MergeConfig(str(tiny_pair["direct"]), str(pickled), allow_pickle=True)
    merge_checkpoints(config, tmp_path / "out", progress=False)
    assert len(calls) == 1 and calls[0]["weights_only"] is True
    # Sharded: each file once, though planning, hashing and merging all read tensors.
    tensors = torch.load(pickled / "pytorch_model.bin", weights_only=True)
    names = sorted(tensors)
    halves = {"a.bin": names[: len(names) // 2], "b.bin": names[len(names) // 2 :]}
    for file, part in halves.items():
        torch.save({name: tensors[name] for name in part}, pickled / file)
    (pickled / "pytorch_model.bin").unlink()
    weight_map = {name: file for file, part in halves.items() for name in part}
    index = json.dumps({"weight_map": weight_map})
    (pickled / "pytorch_model.bin.index.json").write_text(index)
    calls.clear()
    merge_checkpoints(config, tmp_path / "out-sharded", progress=False)
    assert len(calls) == 2 and all(call["weights_only"] for call in calls)


def _edit_tensor(folder: Path, name: str, change) -> None:
    from safetensors.torch import save_file

    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = folder / index["weight_map"][name]
    tensors = load_file(shard)
    change(tensors[name])
    save_file(tensors, shard, metadata={"format": "pt"})


def test_non_finite_parent_is_refused_naming_tensor_and_count(tiny_pair, tmp_path):
    thinking = tmp_path / "thinking"
    shutil.copytree(tiny_pair["thinking"], thinking)
    name = "model.layers.1.mlp.down_proj.weight"

    def poison(tensor: torch.Tensor) -> None:
        flat = tensor.view(-1)
        flat[3], flat[-1], flat[len(flat) // 2] = float("nan"), float("inf"), float("-inf")

    _edit_tensor(thinking, name, poison)
    for method in ("linear", "ties"):
        out = tmp_path / f"out-{method}"
        extra = ["--base", str(tiny_pair["base"])] if method == "ties" else []
        done = merge(tiny_pair["direct"], thinking, out, "--method", method, *extra)
        one_line_error(done, name, "3 non-finite", "thinking")
        no_leftovers(out)
    with pytest.raises(UserError, match="3 non-finite"):
        LiveMerger.load(tiny_pair["direct"], thinking, device="cpu")
    # The dashboard's spectrum model reads the same tensors: refused the same way.
    for method, base in (("linear", None), ("task_arithmetic", tiny_pair["base"])):
        with pytest.raises(UserError, match=f"thinking parent tensor {name} holds 3 non-finite"):
            SpectrumModel.load(tiny_pair["direct"], thinking, base, method=method, device="cpu")


@pytest.mark.parametrize("lam", ["nan", "inf", "-inf"])
def test_non_finite_lam_is_refused_even_with_extrapolation(tiny_pair, tmp_path, lam):
    out = tmp_path / "out"
    done = merge(tiny_pair["direct"], tiny_pair["thinking"], out, f"--lam={lam}",
                 "--allow-extrapolation")  # fmt: skip
    one_line_error(done, "not a finite number")
    no_leftovers(out)
    config = tmp_path / "merge.yaml"
    config.write_text(f"direct: {tiny_pair['direct']}\nthinking: x\nlam: .{lam.strip('-')}\n")
    done = spectrum("merge", "--config", str(config), "--out", str(out), "--allow-extrapolation")
    one_line_error(done, "not a finite number")


def test_merge_config_json_is_strict_json(tiny_pair, tmp_path):
    out = tmp_path / "out"
    spec = MergeSpec("linear", 1.5)
    config = MergeConfig(str(tiny_pair["direct"]), str(tiny_pair["thinking"]), spec=spec,
                         allow_extrapolation=True)  # fmt: skip
    merge_checkpoints(config, out, progress=False)

    def refuse(constant: str):
        raise AssertionError(f"non-JSON constant {constant}")

    for path in out.glob("*.json"):
        json.loads(path.read_text(), parse_constant=refuse)


def _with_config(source: Path, folder: Path, **changes) -> Path:
    shutil.copytree(source, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_parents_whose_configs_differ_are_refused_listing_fields(tiny_pair, tmp_path):
    # Compared as transformers builds them: the rope base in whichever field form this
    # transformers reads (rope_parameters when present, rope_theta otherwise).
    rope = {"rope_parameters": {"rope_type": "default", "rope_theta": 5.0}, "rope_theta": 5.0}
    thinking = _with_config(tiny_pair["thinking"], tmp_path / "thinking", **rope,
                            max_window_layers=7, intermediate_size=4096)  # fmt: skip
    out = tmp_path / "out"
    line = one_line_error(merge(tiny_pair["direct"], thinking, out), "intermediate_size")
    assert "rope_theta" in line or "rope_parameters" in line
    no_leftovers(out)


def test_config_contradicted_by_the_weights_is_refused(tiny_pair, tmp_path):
    layers = json.loads((tiny_pair["direct"] / "config.json").read_text())["num_hidden_layers"]
    wrong = {"num_hidden_layers": layers + 1}
    direct = _with_config(tiny_pair["direct"], tmp_path / "direct", **wrong)
    thinking = _with_config(tiny_pair["thinking"], tmp_path / "thinking", **wrong)
    out = tmp_path / "out"
    one_line_error(
        merge(direct, thinking, out),
        f"declares num_hidden_layers = {layers + 1} but the weights hold {layers}",
    )
    no_leftovers(out)


def test_moe_expert_count_must_match_the_weights(tiny_moe_pair, tmp_path):
    config = json.loads((tiny_moe_pair["direct"] / "config.json").read_text())
    key = next(k for k in ("num_experts", "num_local_experts") if k in config)
    wrong = {key: config[key] * 2}
    direct = _with_config(tiny_moe_pair["direct"], tmp_path / "direct", **wrong)
    thinking = _with_config(tiny_moe_pair["thinking"], tmp_path / "thinking", **wrong)
    one_line_error(merge(direct, thinking, tmp_path / "out"), f"declares {key}")


@pytest.fixture
def mount_point(tmp_path):
    """A fresh mount point; the test mounts on it (as root), unmounted afterwards."""
    point = tmp_path / "mnt"
    point.mkdir()
    yield point
    subprocess.run(["umount", str(point)], capture_output=True)


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here ({done.stderr.strip()})")


def test_read_only_target_is_one_line(tiny_pair, tmp_path, mount_point):
    _mount("--bind", "-o", "ro", str(tmp_path), str(mount_point))
    out = mount_point / "merged"
    one_line_error(merge(tiny_pair["direct"], tiny_pair["thinking"], out), "Read-only file system")
    no_leftovers(tmp_path / "merged")


def test_too_small_disk_is_refused_before_writing(tiny_pair, mount_point):
    _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point))
    out = mount_point / "merged"
    one_line_error(merge(tiny_pair["direct"], tiny_pair["thinking"], out), "not enough free space")
    assert list(mount_point.iterdir()) == []


def test_disk_full_mid_write_is_one_line_and_leaves_nothing(tiny_pair, tmp_path):
    # A file-size limit makes the first shard's write fail part-way (EFBIG), as a full disk.
    out = tmp_path / "merged"
    done = merge(tiny_pair["direct"], tiny_pair["thinking"], out, limit_fsize=20_000)
    one_line_error(done, "cannot write", "File too large")
    no_leftovers(out)


@pytest.mark.parametrize(
    "dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn]
)
def test_finite_check_counts_exactly_and_ignores_overflowing_sums(dtype):
    from spectrum.weights.validate import check_finite

    huge = torch.full((1000,), torch.finfo(dtype).max, dtype=dtype)
    check_finite(huge, "huge", "direct")  # its sum overflows; every value is finite
    huge[[3, 500]] = float("nan")
    with pytest.raises(UserError, match="huge holds 2 non-finite values"):
        check_finite(huge, "huge", "direct")


@pytest.mark.parametrize("where", [0, -1])
def test_finite_check_of_large_and_strided_tensors_finds_every_place(where):
    """Summed part by part (no whole-tensor float32 cast): a NaN in the first or the last
    part, of a tensor larger than one part and of a non-contiguous view of one."""
    from spectrum.weights import validate

    rows = 3 * validate._SUM_ELEMENTS // 1024 + 7  # several parts and a ragged last one
    flat = torch.zeros(rows, 1024, dtype=torch.bfloat16)
    validate.check_finite(flat, "embed", "direct")
    flat[where, where] = float("nan")
    with pytest.raises(UserError, match="embed holds 1 non-finite values"):
        validate.check_finite(flat, "embed", "direct")
    fused = torch.zeros(2, 2 * rows, 1024, dtype=torch.bfloat16)
    gate = fused[:, :rows, :]  # as a Qwen3-MoE checkpoint view of gate_up_proj
    validate.check_finite(gate, "gate", "thinking")
    gate[where, where, where] = float("inf")
    with pytest.raises(UserError, match="gate holds 1 non-finite values"):
        validate.check_finite(gate, "gate", "thinking")
