"""The planner against measured peaks, for one dense and one MoE family (issue #21).

A pair of random float32 weights is written at a size where the model dominates the
process (~90M parameters: Llama 768 × 14 layers; Mixtral 768 × 4 layers × 8 experts),
then each use is run in a fresh process of its own, as a user runs it, and its peak
resident set (the kernel's ``VmHWM``) is compared with the planner's row for that pair:

- the dashboard as ``spectrum app`` builds it on CPU (the spectrum model, or the plain
  parents if it fell back), through its first linear merge and one three-column chat turn;
- the live merger: ``LiveMerger.load`` and two ``set()`` (resident, the policy it picks
  with this much memory).

The planner reads headers only; nothing here feeds it a measured number.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from spectrum.toy.tiny import save_random_model, tiny_config
from spectrum.toy.tokenizer import build_char_tokenizer
from spectrum.weights import planner

TOLERANCE = 0.15
# Dense: 88M parameters. MoE: 82M, most of them in the fused expert tensors.
SHAPES = {
    "llama": dict(num_hidden_layers=14, intermediate_size=2048),
    "mixtral": dict(num_hidden_layers=4, intermediate_size=1024, num_local_experts=8),
}
_ATTENTION = dict(hidden_size=768, num_attention_heads=12, num_key_value_heads=4, head_dim=64)

# Each child reports its peak RSS; the imports are what that process really imports.
DASHBOARD = """
import json, sys, tempfile, torch
from pathlib import Path
from spectrum.dashboard import Dashboard, MergeSpec
from spectrum.generate.batch import DecodingSettings
torch.set_num_threads(1)
root = Path(sys.argv[1])
with tempfile.TemporaryDirectory() as folder:
    dashboard = Dashboard(root / "direct", root / "thinking", device="cpu",
                          db=Path(folder) / "d.duckdb")
    request = MergeSpec("linear", 0.5)
    dashboard.set_merge(request)
    decoding = {c: DecodingSettings.for_model(c, max_new_tokens=2)
                for c in ("direct", "merged", "thinking")}
    for _ in dashboard.chat([], "hi", request, decoding):
        pass
    served = "spectrum model" if dashboard.spectrum is not None else "plain parents"
"""
LIVE = """
import json, sys, torch
from pathlib import Path
from spectrum.live import LiveMerger
from spectrum.merge.spec import MergeSpec
torch.set_num_threads(1)
root = Path(sys.argv[1])
merger = LiveMerger.load(root / "direct", root / "thinking", None, device="cpu")
for lam in (0.5, 0.7):
    merger.set(MergeSpec("linear", lam))
served = "resident"
"""
REPORT = """
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
            if line.startswith("VmHWM:"))
print(json.dumps({"peak": peak, "served": served}))
"""


@pytest.fixture(scope="module", params=sorted(SHAPES))
def pair(request, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp(request.param)
    vocab = len(build_char_tokenizer())
    config = tiny_config(request.param, vocab_size=vocab, **_ATTENTION, **SHAPES[request.param])
    direct = save_random_model(root / "direct", config, 1, max_shard_size="2GB")
    save_random_model(root / "thinking", config, 2, like=direct, max_shard_size="2GB")
    return root


def _measure(pair: Path) -> dict[str, dict]:
    """Both uses at once, each in its own process (peaks are per process)."""
    children = {
        use: subprocess.Popen(
            [sys.executable, "-c", code + REPORT, str(pair)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for use, code in (("dashboard", DASHBOARD), ("live merger", LIVE))
    }
    results = {}
    for use, child in children.items():
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err[-2000:]
        results[use] = json.loads(out.strip().splitlines()[-1])
    return results


def test_planner_within_15_percent_of_measured_peak(pair: Path) -> None:
    facts = planner.read_pair(pair / "direct", pair / "thinking")
    # Host memory to spare: the rows are those of the paths the children take.
    rows = planner.plan_pair(facts, planner.Hardware("cpu", None, 2**50))
    # The live merger's rows come in preference order: the first that fits is its plan.
    planned = {use: planner.pick([row for row in rows if row.use == use])
               for use in ("dashboard", "live merger")}  # fmt: skip
    measured = _measure(pair)
    report = {use: (measured[use]["peak"] / 2**20, planned[use].host_bytes / 2**20)
              for use in planned}  # fmt: skip
    print(f"{facts.label}: measured vs planned MiB {report}")
    for use, row in planned.items():
        # The row follows the path the process really took.
        assert row.policy == measured[use]["served"], (use, row.policy, measured[use])
        peak = measured[use]["peak"]
        assert abs(row.host_bytes - peak) <= TOLERANCE * peak, (use, report[use])
    # The pair is big enough that the weights, not the interpreter, decide the peak.
    assert facts.model_bytes > 0.5 * planner.PROCESS_BYTES["dashboard"]
