"""``spectrum plan`` and the refusals built on it, at the real Qwen3 shapes.

Checkpoints here are real safetensors headers with the real shapes of Qwen3-4B-2507 and
Qwen3-30B-A3B over *sparse* data (``os.truncate``): the project's reader opens them, the
sizes are the real ones, no disk is used. Expected figures are computed by hand below from
the published config.json fields, not by the code under test.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen3Config

from spectrum.errors import UserError
from spectrum.weights import planner
from spectrum.weights.checkpoint import open_checkpoint
from spectrum.weights.planner import (
    CUDA_CONTEXT,
    DEVICE_HEADROOM,
    GIB,
    PROCESS_BYTES,
    VLLM_KV,
    Hardware,
    plan_pair,
    prepared_bytes_per_element,
    read_pair,
)
from spectrum.weights.shapes import (
    QWEN3_4B_2507,
    QWEN3_30B_A3B,
    checkpoint_shapes,
    write_header_checkpoint,
)

V = 151936  # vocabulary of every Qwen3
# Qwen3-4B: hidden 2560, 36 layers, 32 q heads / 8 kv heads of 128, MLP 9728, tied head.
H4, Q4, KV4 = 2560, 32 * 128, 8 * 128
LAYER_4B = 2 * H4 + Q4 * H4 + 2 * KV4 * H4 + H4 * Q4 + 2 * 128 + 3 * H4 * 9728
ELEMENTS_4B = V * H4 + 36 * LAYER_4B + H4
# Qwen3-30B-A3B: hidden 2048, 48 layers, 32 q / 4 kv heads of 128, 128 experts of 768, router.
H30, Q30, KV30 = 2048, 32 * 128, 4 * 128
LAYER_30B = 2 * H30 + Q30 * H30 + 2 * KV30 * H30 + H30 * Q30 + 2 * 128
LAYER_30B += 128 * H30 + 128 * 3 * H30 * 768
ELEMENTS_30B = 2 * V * H30 + 48 * LAYER_30B + H30  # untied: embedding and lm_head
GARBAGE = b"\xff\xff" * 4096  # NaN bf16 bytes at the start of every shard's data


@pytest.fixture(scope="module")
def real_pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_headers")
    pairs = {}
    for key, config in (("4b", QWEN3_4B_2507), ("30b", QWEN3_30B_A3B)):
        pairs[key] = {
            role: write_header_checkpoint(root / key / role, config, fill=GARBAGE)
            for role in ("direct", "thinking")
        }
    return pairs


def test_hand_computed_totals_match_published_sizes():
    # Qwen3-4B's index.json states total_size 8,044,936,192; 30B-A3B is 30.5 B parameters.
    assert 2 * ELEMENTS_4B == 8_044_936_192
    assert ELEMENTS_30B == 30_532_122_624


def test_sparse_headers_are_real_checkpoints(real_pairs):
    folder = real_pairs["30b"]["direct"]
    files = list(folder.glob("*.safetensors"))
    apparent = sum(f.stat().st_size for f in files)
    on_disk = sum(f.stat().st_blocks * 512 for f in files)
    assert apparent > 2 * ELEMENTS_30B and on_disk < 64 * 2**20
    checkpoint = open_checkpoint(folder)  # the project's reader accepts them as they are
    assert checkpoint.shape("model.layers.47.mlp.experts.127.down_proj.weight") == (2048, 768)
    assert checkpoint.dtype("lm_head.weight") == torch.bfloat16


def test_read_pair_sizes(real_pairs):
    four = read_pair(real_pairs["4b"]["direct"], real_pairs["4b"]["thinking"])
    assert four.parent_bytes == (2 * ELEMENTS_4B, 2 * ELEMENTS_4B)
    assert four.float_elements == ELEMENTS_4B
    assert (four.largest_elements, four.largest_bytes) == (V * H4, 2 * V * H4)
    thirty = read_pair(real_pairs["30b"]["direct"], real_pairs["30b"]["thinking"])
    assert thirty.parent_bytes == (2 * ELEMENTS_30B, 2 * ELEMENTS_30B)
    assert thirty.float_elements == ELEMENTS_30B and not thirty.float32_parents
    # Tensors are read shard by shard, in file order: the embedding (first shard) sits
    # beside layer 0's input norm, lm_head (last shard) beside the final norm.
    assert four.adjacent_bytes == 2 * V * H4 + 2 * H4 and four.probe_bytes == 0
    assert thirty.adjacent_bytes == 2 * V * H30 + 2 * H30
    assert thirty.probe_bytes == 2 * 4 * 128 * 2 * 768 * H30


def test_hand_written_shapes_are_transformers_own():
    """checkpoint_shapes against the shapes transformers builds for the same configs."""
    dense = {k: v for k, v in QWEN3_4B_2507.items() if k != "architectures"}
    dense["num_hidden_layers"] = 2  # the layer pattern; 36 of them changes nothing
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(Qwen3Config(**dense))
    theirs = {n: tuple(t.shape) for n, t in model.state_dict().items() if n != "lm_head.weight"}
    assert checkpoint_shapes(dense) == theirs


def test_hand_written_moe_shapes_match_a_saved_checkpoint(tiny_moe_pair):
    checkpoint = open_checkpoint(tiny_moe_pair["direct"])
    saved = {name: checkpoint.shape(name) for name in checkpoint.names()}
    config = dict(checkpoint.config, mlp_only_layers=[], decoder_sparse_step=1)
    assert checkpoint_shapes(config) == saved


def test_prepared_bytes_per_element_from_the_methods_themselves():
    def bpe(method, backend="transformers", device="cuda"):
        return prepared_bytes_per_element(method, backend, device, float32_parents=False)

    assert bpe("linear") == 4  # two bf16 parents on the device
    assert bpe("linear", device="cpu") == 0  # the host parents themselves
    assert bpe("linear", backend="vllm") == 8  # float32, no in-place writer
    assert bpe("slerp") == bpe("task_arithmetic") == bpe("dare") == 8
    assert bpe("ties") == bpe("topk_replace") == bpe("emr") == 12


def by_use(needs):
    return {(need.use, need.policy): need for need in needs}


def test_plan_qwen3_4b_on_an_80gb_gpu(real_pairs):
    pair = read_pair(real_pairs["4b"]["direct"], real_pairs["4b"]["thinking"])
    hardware = Hardware("cuda", 80 * GIB, 128 * GIB)
    needs = by_use(plan_pair(pair, hardware))
    model = 2 * ELEMENTS_4B
    work = 2 * 4 * V * H4  # linear's in-place writer: a float32 result and one temporary
    resident = needs["live merger", "resident"]
    assert resident.device_bytes == CUDA_CONTEXT + model + 2 * model + work
    # The host holds both parents, and while the model loads, the tensor in hand.
    assert resident.host_bytes == PROCESS_BYTES["transformers"] + 2 * model + 2 * V * H4
    assert resident.fits and resident.smallest_gpu == "A100 40GB"
    # The dashboard serves linear merges from its spectrum model: both parents, and while it
    # loads one tensor's random stand-in measuring a module's form (the head, bf16);
    # slerp adds the live merger beside it (one CUDA context).
    dashboard = next(need for need in needs.values() if need.use == "dashboard")
    assert dashboard.policy == "spectrum model" and dashboard.fits
    assert dashboard.device_bytes == CUDA_CONTEXT + 2 * model + 2 * V * H4
    batched = needs["batched spectrum model", "—"]
    assert batched.device_bytes == CUDA_CONTEXT + 2 * model + 2 * V * H4
    slerp = by_use(plan_pair(pair, hardware, "slerp"))
    slerp_dashboard = next(need for need in slerp.values() if need.use == "dashboard")
    slerp_live = slerp["live merger", slerp_dashboard.policy]
    assert slerp_dashboard.device_bytes == slerp_live.device_bytes + 2 * model + 2 * V * H4
    assert batched.smallest_gpu == "A10G 24GB"  # 15.6 GiB ≤ 0.85 × 22.5 GiB


def test_plan_qwen3_30b_a3b_needs_the_disk_policy(real_pairs):
    pair = read_pair(real_pairs["30b"]["direct"], real_pairs["30b"]["thinking"])
    hardware = Hardware("cuda", 80 * GIB, 128 * GIB)
    needs = by_use(plan_pair(pair, hardware))
    parents = 2 * 2 * ELEMENTS_30B
    assert not needs["live merger", "resident"].fits
    streamed = needs["live merger", "streamed"]
    assert not streamed.fits and streamed.host_bytes > parents  # both parents on the host
    disk = needs["live merger", "disk"]
    # In hand and read ahead: the embedding and a norm at most; 2 parents, bf16.
    reads = 2 * (2 * V * H30 + 2 * H30)
    # Mapping the fused gate_up_proj (128 experts × 2 × 768 × 2048) probes it with two
    # int32 copies while the model loads.
    probe = 2 * 4 * (128 * 2 * 768 * H30)
    assert disk.fits and disk.host_bytes == PROCESS_BYTES["transformers"] + max(reads, probe)
    assert disk.device_bytes <= DEVICE_HEADROOM * 80 * GIB
    assert disk.host_bytes < 4 * GIB
    assert not next(n for n in needs.values() if n.use == "dashboard").fits
    assert needs["batched spectrum model", "—"].smallest_gpu == "H200 141GB"
    assert needs["offline merge", "streaming"].fits


def test_plan_qwen3_30b_a3b_on_a_cpu_host(real_pairs):
    """The CPU rows, term by term: what bench/real_scale.py measures at these shapes."""
    pair = read_pair(real_pairs["30b"]["direct"], real_pairs["30b"]["thinking"])
    needs = by_use(plan_pair(pair, Hardware("cpu", None, 512 * GIB)))
    model = 2 * ELEMENTS_30B
    embed = 2 * V * H30  # bf16; lm_head (untied) is as large
    reads = 2 * (embed + 2 * H30)  # in hand and read ahead: the embedding and a norm
    work = 2 * 4 * V * H30  # the float32 result and a float32 cast of a parent
    disk = needs["live merger", "disk"]
    assert disk.host_bytes == PROCESS_BYTES["transformers"] + model + reads + work
    resident = needs["live merger", "resident"]
    # Both parents, the model, and linear's float32 work (its "prepared" are the parents).
    assert resident.host_bytes == PROCESS_BYTES["transformers"] + 2 * model + model + work
    # vllm-cpu: its KV cache, two copies of the vocabulary matrices (embedding and lm_head),
    # three of the largest tensor while reload_weights runs, the tensor in hand in float32
    # (both parents) and the merged float32 result.
    vllm = needs["vLLM sweep worker", "disk"]
    extra = 2 * (2 * embed) + 3 * embed + 2 * 4 * V * H30
    assert vllm.host_bytes == (
        PROCESS_BYTES["vllm"] + VLLM_KV + model + reads + 4 * V * H30 + extra
    )
    batched = needs["batched spectrum model", "—"]
    assert batched.host_bytes == PROCESS_BYTES["transformers"] + 2 * model + embed


def refused(call) -> tuple[str, float, int]:
    """The UserError ``call`` raises, its seconds, and bytes this process read meanwhile."""
    before, start = _rchar(), time.perf_counter()
    with pytest.raises(UserError) as error:
        call()
    return str(error.value), time.perf_counter() - start, _rchar() - before


def _rchar() -> int:
    with open("/proc/self/io") as handle:
        return int(next(line for line in handle if line.startswith("rchar")).split()[1])


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux /proc/self/io")
def test_too_big_pair_is_refused_before_any_weight_is_read(real_pairs, monkeypatch, tmp_path):
    """122 GB of garbage weights on a 16 GB host: one line, from headers alone."""
    monkeypatch.setenv("SPECTRUM_HOST_MEMORY", "16GB")
    direct, thinking = real_pairs["30b"]["direct"], real_pairs["30b"]["thinking"]
    headers = sum(8 + 8 * 2**20 for _ in direct.glob("*.safetensors"))  # generous bound

    from spectrum.live import LiveMerger

    message, seconds, read = refused(lambda: LiveMerger.load(direct, thinking, device="cpu"))
    assert "does not fit the live merger" in message and "\n" not in message
    assert "56.9 GiB per parent" in message
    # Reading any weight would read at least one whole tensor; the largest are 622 MB.
    assert read < 2 * headers + 64 * 2**20

    from spectrum.dashboard.service import Dashboard

    message, _, read = refused(
        lambda: Dashboard(direct, thinking, device="cpu", db=tmp_path / "votes.duckdb")
    )
    assert "does not fit the dashboard" in message and read < 2 * headers + 64 * 2**20

    from spectrum.eval.sweep import SweepSpec, run_sweep

    spec = SweepSpec(direct=str(direct), thinking=str(thinking), methods=("linear",),
                     lams=(0.5,), limit=1, levels=(1,))  # fmt: skip
    message, _, read = refused(lambda: run_sweep(spec, tmp_path / "s.duckdb", progress=False))
    # The sweep refuses before hashing 122 GB of parents.
    assert "does not fit" in message and read < 2 * headers + 64 * 2**20
    assert seconds < 60  # a report, not a timing target: minutes would mean weights were read


def test_plan_command(real_pairs):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    pair = real_pairs["30b"]
    args = ["--direct", str(pair["direct"]), "--thinking", str(pair["thinking"])]
    done = subprocess.run(
        [sys.executable, "-m", "spectrum", "plan", *args, "--gpu-memory", "80GB",
         "--host-memory", "128GB", "--markdown"], capture_output=True, text=True, env=env,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| live merger")]
    assert [row.split("|")[2].strip() for row in rows] == ["resident", "streamed", "disk"]
    assert [row.split("|")[5].strip() for row in rows] == ["no", "no", "yes"]
    bad = subprocess.run(
        [sys.executable, "-m", "spectrum", "plan", *args, "--gpu-memory", "lots"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "lots" in bad.stderr


def test_plan_command_aligned_for_a_terminal():
    """Without --markdown: padded columns, and a toy pair in MiB (never "0.0 GiB")."""
    pair = ["--direct", "assets/pair/direct", "--thinking", "assets/pair/thinking"]
    done = subprocess.run(
        [sys.executable, "-m", "spectrum", "plan", *pair], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()}, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header, rule, rows = lines[2], lines[3], lines[4:]
    assert "|" not in done.stdout and "0.0 GiB" not in done.stdout and "MiB" in done.stdout
    # Every column starts where its header does.
    starts = [header.index(name) for name in ("policy", "host", "fits", "smallest GPU")]
    for row in rows:
        assert all(row[start - 2 : start] == "  " for start in starts), row
    assert len(rule.split()) == 8 and {row.split()[0] for row in rows} >= {"dashboard"}


def test_parse_bytes():
    assert planner.parse_bytes("80GB") == 80 * GIB == planner.parse_bytes("80 GiB")
    assert planner.parse_bytes("512MB") == 512 * 2**20
    with pytest.raises(UserError):
        planner.parse_bytes("-3GB")
    assert math.isclose(planner.parse_bytes("1.5G"), 1.5 * GIB)
