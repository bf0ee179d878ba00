"""Every writer checks its target and writes atomically (issue #20): page exports racing
on one folder, folders that appear or change while a merge runs, markers that prove
authorship, `spectrum report --out`, non-finite merges and an export quota. Real files,
real processes, a real Gradio server driven by real clients."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from gradio_client import Client
from safetensors.torch import load_file
from test_app_server import ALL_MODULES, launch_app
from test_eval_report import _rows

from spectrum.dashboard.service import DEFAULT_PAIR
from spectrum.errors import UserError
from spectrum.eval import store
from spectrum.eval.report import REPORT_START
from spectrum.live import LiveMerger
from spectrum.merge import MergeSpec
from spectrum.weights.output import MARKER, SHIPPED_ASSETS, staged_folder

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# Before the fix every export staged in one `.merged.tmp-<pid>` folder that each request
# cleared first: 7 of 8 trials of the hostile probe ended with merge_config.json labelling
# weights of the other λ, or both exports told "Wrote…". 8 trials showed it every time.
RACE_TRIALS = 8
RACE_LAMS = (0.1, 0.9)


def spectrum(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spectrum", *args], env=ENV, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def one_line_error(done: subprocess.CompletedProcess, command: str, *expected: str) -> str:
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"spectrum {command}: error: "), done.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def merge(pair: dict, out: Path, *extra: str) -> subprocess.CompletedProcess:
    args = ["merge", "--direct", str(pair["direct"]), "--thinking", str(pair["thinking"])]
    return spectrum(*args, "--out", str(out), "--quiet", *extra)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path → sha256): equal means byte for byte."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def staging_leftovers(out: Path) -> list[Path]:
    return list(out.parent.glob(f".{out.name}.tmp-*"))


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        found.update(load_file(path))
    return found


def linear_merge(lam: float) -> dict[str, torch.Tensor]:
    """The embedded pair merged at ``lam``, computed here: (1 − λ)·θ_D + λ·θ_T in float32."""
    direct, thinking = (tensors(DEFAULT_PAIR / role) for role in ("direct", "thinking"))
    return {
        name: ((1 - lam) * value.float() + lam * thinking[name].float()).to(value.dtype)
        for name, value in direct.items()
    }


def assert_marker_matches(folder: Path) -> None:
    files = json.loads((folder / MARKER).read_text())["files"]
    assert sorted(files) == sorted(p.name for p in folder.iterdir() if p.name != MARKER)
    for name, entry in files.items():
        data = (folder / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


# --- the page: two real clients against a real server ---------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("writers_server")
    # The race's winners and one more fit the quota; the export after them does not.
    with launch_app(folder, "--max-exports", str(RACE_TRIALS + 1)) as url:
        yield folder, url


def export(client: Client, out: Path, lam: float, *, overwrite: bool = False, **params):
    args = [str(out), overwrite, params.pop("method", "linear"), lam, "", ALL_MODULES, 0]
    return client.predict(*args, api_name="/export", **params)


def test_two_pages_exporting_to_one_folder_one_wins_and_the_config_tells_the_truth(server):
    folder, url = server
    pages = [Client(url, verbose=False) for _ in RACE_LAMS]
    expected = {lam: linear_merge(lam) for lam in RACE_LAMS}
    for trial in range(RACE_TRIALS):
        out = folder / f"race-{trial}"
        with ThreadPoolExecutor(len(pages)) as pool:
            pairs = zip(pages, RACE_LAMS, strict=True)
            jobs = [pool.submit(export, page, out, lam) for page, lam in pairs]
            outcomes = [job.exception() or job.result() for job in jobs]
        wrote = [o for o in outcomes if isinstance(o, str)]
        refused = [str(o) for o in outcomes if isinstance(o, Exception)]
        assert len(wrote) == 1 and len(refused) == 1, outcomes
        assert str(out) in wrote[0]
        assert "already exists" in refused[0] or "appeared while this merge ran" in refused[0]
        assert "\n" not in refused[0].strip()
        lam = json.loads((out / "merge_config.json").read_text())["lam"]
        merged = tensors(out)
        assert merged.keys() == expected[lam].keys()
        for name, value in merged.items():  # every tensor of the λ the config names
            torch.testing.assert_close(value, expected[lam][name], rtol=0, atol=1e-6)
        assert_marker_matches(out)
        assert not staging_leftovers(out)


def test_a_page_export_that_overflows_is_refused_naming_the_tensor(server):
    folder, url = server
    out = folder / "overflow"
    with pytest.raises(Exception, match=r"not finite: merged tensor \S+\.weight holds") as error:
        export(Client(url, verbose=False), out, 0.5, method="task_arithmetic", param_7=1e300)
    assert "--" not in str(error.value)
    assert not out.exists() and not staging_leftovers(out)


def test_the_export_quota_is_refused_before_any_work_with_the_numbers(server):
    """The quota is the race's 8 winners and one more: the 8 refused racers and the
    refused overflow gave their places back, or the race itself would have hit it."""
    folder, url = server
    page, quota = Client(url, verbose=False), RACE_TRIALS + 1
    for attempt in range(quota + 1):
        out = folder / f"quota-{attempt}"
        try:
            export(page, out, 0.5)
        except Exception as error:  # gradio_client raises the page's error as Exception
            refused = str(error)
            break
    else:
        pytest.fail(f"{quota + 1} exports were all written")
    assert f"has written {quota} of its {quota} exports" in refused
    assert "this export would add" in refused and "GB" in refused
    assert not out.exists() and not staging_leftovers(out)


# --- the swap: the destination as it is at the end, not at the start -------------------


def test_a_folder_that_appears_while_a_job_runs_is_refused_never_replaced(tmp_path):
    out = tmp_path / "merged"
    for mine in ({}, {"notes.txt": "mine"}):  # empty: a plain rename would replace it
        with pytest.raises(UserError, match="appeared while this merge ran"):
            with staged_folder(out) as staging:
                (staging.path / "model.safetensors").write_bytes(b"weights")
                out.mkdir()
                for name, text in mine.items():
                    (out / name).write_text(text)
        assert {p.name: p.read_text() for p in out.iterdir()} == mine
        assert not staging_leftovers(out)
        shutil.rmtree(out)


def _write_parent(folder: Path, seed: int) -> None:
    """A ~50 MB random Qwen3-shaped float32 checkpoint: a merge of it takes a while."""
    from safetensors.torch import save_file

    folder.mkdir()
    generator = torch.Generator().manual_seed(seed)
    hidden, layers = 512, 8
    tensors = {
        f"model.layers.{layer}.mlp.{proj}_proj.weight": torch.randn(
            (hidden, 3 * hidden), generator=generator
        )
        for layer in range(layers)
        for proj in ("gate", "up", "down")
    }
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    config = {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]}
    config |= {"num_hidden_layers": layers, "hidden_size": hidden}
    (folder / "config.json").write_text(json.dumps(config))


def test_a_folder_made_at_out_while_the_cli_merges_survives(tmp_path):
    pair = {"direct": tmp_path / "direct", "thinking": tmp_path / "thinking"}
    _write_parent(pair["direct"], 1)
    _write_parent(pair["thinking"], 2)
    out = tmp_path / "merged"
    args = ["merge", "--direct", str(pair["direct"]), "--thinking", str(pair["thinking"])]
    args += ["--out", str(out), "--max-shard-size", "2MB", "--device", "cpu", "--quiet"]
    process = subprocess.Popen(
        [sys.executable, "-m", "spectrum", *args], env=ENV, stderr=subprocess.PIPE, text=True
    )
    while not any(tmp_path.glob(".merged.tmp-*/model-00001-*.safetensors")):
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.002)
    out.mkdir()  # the user's folder, made while the merge writes its first shards
    (out / "notes.txt").write_text("mine")
    assert process.poll() is None, "the merge finished before the folder was made"
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 2, stderr
    (line,) = stderr.strip().splitlines()
    assert "appeared while this merge ran" in line and "left as it is" in line
    assert {p.name: p.read_text() for p in out.iterdir()} == {"notes.txt": "mine"}
    assert not staging_leftovers(out)


def test_a_forced_replace_checks_the_old_folder_again_at_the_swap(tiny_pair, tmp_path):
    out = tmp_path / "merged"
    assert merge(tiny_pair, out).returncode == 0
    with pytest.raises(UserError, match="README.md was changed"):
        with staged_folder(out, force=True) as staging:
            (staging.path / "model.safetensors").write_bytes(b"new weights")
            (out / "README.md").write_text("edited while the job ran")
            edited = snapshot(out)
    assert snapshot(out) == edited  # swapped back, untouched
    assert not staging_leftovers(out)


def test_two_jobs_of_one_process_stage_apart(tmp_path):
    out = tmp_path / "merged"
    with pytest.raises(UserError, match="appeared while this merge ran"):
        with staged_folder(out) as first:
            with staged_folder(out) as second:
                assert first.path != second.path
                (first.path / "a").write_text("first")
                (second.path / "a").write_text("second")
            assert (first.path / "a").read_text() == "first"  # the second finished first
    assert (out / "a").read_text() == "second"
    assert_marker_matches(out)
    assert not staging_leftovers(out)


# --- the marker: content hashes, not names and sizes ---------------------------------


def test_force_refuses_a_hand_written_marker_of_names_and_sizes(tiny_pair, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"my own weights")
    (out / "config.json").write_text("{}")
    files = {p.name: p.stat().st_size for p in out.iterdir()}
    (out / MARKER).write_text(json.dumps({"tool": "thinking-spectrum", "files": files}))
    before = snapshot(out)
    one_line_error(merge(tiny_pair, out, "--force"), "merge", "not written by this tool")
    assert snapshot(out) == before


@pytest.mark.parametrize("edited", ["README.md", "a weight shard"])
def test_force_refuses_a_same_size_hand_edit_of_an_output(tiny_pair, tmp_path, edited):
    out = tmp_path / "merged"
    assert merge(tiny_pair, out, "--max-shard-size", "20KB").returncode == 0
    if edited == "a weight shard":
        edited = sorted(p.name for p in out.glob("*.safetensors"))[-1]
    data = bytearray((out / edited).read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    (out / edited).write_bytes(bytes(data))
    before = snapshot(out)
    one_line_error(merge(tiny_pair, out, "--force"), "merge", f"{edited} was changed")
    assert snapshot(out) == before and not staging_leftovers(out)
    (out / edited).write_bytes(bytes(data[:-1]) + bytes([data[-1] ^ 0xFF]))  # undone
    assert merge(tiny_pair, out, "--force", "--lam", "0.25").returncode == 0
    assert_marker_matches(out)


# --- symbolic links -------------------------------------------------------------------


def test_a_symlinked_out_is_refused_before_any_work(tiny_pair, tmp_path):
    real = tmp_path / "real"
    assert merge(tiny_pair, real).returncode == 0
    link = tmp_path / "link"
    link.symlink_to(real)
    before = snapshot(real)
    for extra in ((), ("--force",)):
        one_line_error(merge(tiny_pair, link, *extra), "merge", "symbolic link")
    assert snapshot(real) == before and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


def test_a_parent_whose_files_link_into_out_is_refused(tiny_pair, tmp_path):
    out = tmp_path / "merged"
    assert merge(tiny_pair, out).returncode == 0
    linked = tmp_path / "linked"  # a parent made of links into an earlier output
    linked.mkdir()
    for path in out.iterdir():
        (linked / path.name).symlink_to(path)
    before = snapshot(out)
    done = merge({"direct": tiny_pair["direct"], "thinking": linked}, out, "--force")
    one_line_error(done, "merge", "thinking parent's file", "links into the output folder")
    assert snapshot(out) == before and not staging_leftovers(out)


# --- finite out -----------------------------------------------------------------------


def test_an_overflowing_merge_is_refused_offline_and_live(tiny_pair, tmp_path):
    out = tmp_path / "merged"
    base = ["--base", str(tiny_pair["base"]), "--method", "task_arithmetic"]
    done = merge(tiny_pair, out, *base, "--param", "scale=1e300")
    line = one_line_error(done, "merge", "not finite: merged tensor ", "task_arithmetic")
    assert re.search(r"merged tensor \S+\.weight holds \d+ NaN or Inf", line), line
    assert not out.exists() and not staging_leftovers(out)

    merger = LiveMerger.load(tiny_pair["direct"], tiny_pair["thinking"], tiny_pair["base"],
                             device="cpu")  # fmt: skip
    merger.set(MergeSpec("linear", 0.5))
    direct = tensors(tiny_pair["direct"])
    with pytest.raises(UserError, match=r"not finite: merged tensor \S+\.weight holds"):
        merger.set(MergeSpec("task_arithmetic", 0.5, params={"scale": 1e300}))
    # Nothing half-merged is served: the direct parent, and labelled so.
    assert merger.current.spec == MergeSpec("linear", 0.0).checked()
    served = dict(merger.model.named_parameters())
    for name, value in direct.items():
        if name in served:
            assert torch.equal(served[name].detach(), value), name


# --- spectrum report --out -------------------------------------------------------------


@pytest.fixture
def results(tiny_pair, tmp_path):
    """A results DB with samples and a run whose direct parent is ``tmp_path/parent``."""
    import pandas as pd

    shutil.copytree(tiny_pair["direct"], tmp_path / "parent")
    path = tmp_path / "results.duckdb"
    con = store.connect(path)
    store.insert_frame(con, "samples", pd.DataFrame(_rows("linear", 0.0) + _rows("linear", 1.0)))
    con.execute(
        "INSERT INTO runs (run_id, direct, thinking) VALUES ('r', ?, ?)",
        [str(tmp_path / "parent"), str(tiny_pair["thinking"])],
    )
    con.close()
    return path


def report(db: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return spectrum("report", "--db", str(db), "--out", str(out), *extra)


def test_report_never_overwrites_a_db_a_parent_or_the_assets(results, tmp_path):
    other_db = tmp_path / "other.duckdb"
    shutil.copyfile(results, other_db)
    parent = tmp_path / "parent"
    (parent / "sub").mkdir()  # no model here: only the DB's runs name it
    cases = {
        results: "is a results database",
        other_db: "is a results database",
        parent / "model.safetensors": "inside a model folder or names a weight file",
        parent / "report.html": "inside a model folder",
        parent / "sub" / "report.html": "lies inside the parent model",
        SHIPPED_ASSETS / "report.html": "shipped assets folder",
    }
    guarded = [tmp_path, SHIPPED_ASSETS]
    before = {folder: snapshot(folder) for folder in guarded}
    for out, expected in cases.items():
        for extra in ((), ("--force",)):
            one_line_error(report(results, out, *extra), "report", expected)
    assert {folder: snapshot(folder) for folder in guarded} == before
    assert not (SHIPPED_ASSETS / "report.html").exists()


def test_report_into_a_missing_folder_a_folder_or_a_link_is_one_line(results, tmp_path):
    missing = tmp_path / "no" / "such" / "report.html"
    one_line_error(report(results, missing), "report", "does not exist")
    assert not (tmp_path / "no").exists()
    folder = tmp_path / "folder"
    folder.mkdir()
    one_line_error(report(results, folder), "report", "is a folder")
    link = tmp_path / "link.html"
    link.symlink_to(tmp_path / "elsewhere.html")
    one_line_error(report(results, link), "report", "symbolic link")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "folder", "link.html", "parent", "results.duckdb",
    ]  # fmt: skip
    assert list(folder.iterdir()) == []


def test_report_replaces_a_report_and_other_files_only_with_force(results, tmp_path):
    out = tmp_path / "report.html"
    assert report(results, out).returncode == 0
    assert out.read_text().startswith(REPORT_START)
    assert report(results, out).returncode == 0  # an earlier report is the tool's own
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    one_line_error(report(results, notes), "report", "not a report of this tool", "--force")
    assert notes.read_text() == "my notes"
    assert report(results, notes, "--force").returncode == 0
    assert notes.read_text().startswith(REPORT_START)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.txt", "parent", "report.html", "results.duckdb",
    ]  # fmt: skip
