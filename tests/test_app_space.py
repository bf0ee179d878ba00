"""What a Hugging Face Space needs from the repository, and the app's command line."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import gradio
import yaml

from spectrum.cli import build_parser, main
from ui.command import add_arguments
from ui.common import gpu

REPO = Path(__file__).resolve().parents[1]


def front_matter() -> dict:
    text = (REPO / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_readme_front_matter_declares_a_gradio_space():
    meta = front_matter()
    assert meta["sdk"] == "gradio"
    assert (REPO / meta["app_file"]).is_file() and meta["app_file"] == "app.py"
    assert meta["suggested_hardware"]
    assert meta["sdk_version"] == gradio.__version__


def test_requirements_mirror_pyproject():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    lines = (REPO / "requirements.txt").read_text().splitlines()
    requirements = [line for line in lines if line and not line.startswith("#")]
    assert requirements == pyproject["project"]["dependencies"]


def test_gpu_decorator_is_a_no_op_without_zerogpu():
    def handler(x):
        return x + 1

    assert gpu(handler)(1) == 2


def test_app_flags_default_to_localhost_and_the_embedded_pair(monkeypatch):
    for name in ("GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "SPECTRUM_DIRECT", "SPECTRUM_DB"):
        monkeypatch.delenv(name, raising=False)
    args = build_parser().parse_args(["app"])
    assert (args.host, args.port, args.direct, args.trust_remote_code) == (
        "127.0.0.1",
        7860,
        None,
        False,
    )
    monkeypatch.setenv("SPECTRUM_DIRECT", "Qwen/Qwen3-4B-Instruct-2507")
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    assert (args.direct, args.host) == ("Qwen/Qwen3-4B-Instruct-2507", "0.0.0.0")


def test_bad_flags_are_one_line_errors(tmp_path, capsys):
    assert main(["app", "--direct", str(tmp_path / "missing"), "--thinking", "x"]) == 2
    assert "is not a model folder" in capsys.readouterr().err
    folder = tmp_path / "model"
    folder.mkdir()
    assert main(["app", "--direct", str(folder)]) == 2
    assert "give both --direct and --thinking" in capsys.readouterr().err


def test_app_py_help_runs_without_loading_models():
    result = subprocess.run(
        [sys.executable, "app.py", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "--trust-remote-code" in result.stdout and "--allow-dir" in result.stdout


def test_votes_default_to_persistent_storage_when_a_space_has_it(tmp_path):
    """A Space's writable /data survives restarts: the default DB goes there; without it,
    results/ in the checkout."""
    probe = "from spectrum.dashboard import DEFAULT_DB; print(DEFAULT_DB)"
    env = {**os.environ, "SPECTRUM_PERSISTENT_DIR": str(tmp_path)}
    where = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env,
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert where.stdout.strip() == str(tmp_path / "spectrum.duckdb")
    env["SPECTRUM_PERSISTENT_DIR"] = str(tmp_path / "absent")
    where = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env,
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert where.stdout.strip() == str(REPO / "results" / "spectrum.duckdb")


def test_front_matter_hardware_fits_the_default_pair():
    """The embedded pair runs on a CPU: the Space should not ask for a GPU it never uses."""
    assert front_matter()["suggested_hardware"].startswith("cpu-")
