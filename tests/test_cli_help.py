"""`spectrum --help` as a newcomer runs it: fast (no torch, transformers or gradio) and
written for users.

Speed is a ratio to a bare interpreter's start, measured in the same run, so a slow or
busy machine slows both alike. It counts CPU time (user + system) of each child, which
other engineers' processes on a shared 2-core machine disturb far less than wall time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spectrum.cli import command_modules

REPO = Path(__file__).resolve().parents[1]
# Measured 3–5×: argparse plus importlib.metadata's entry-point scan (which finds
# `spectrum app`) is ≈ 2.9× on its own, the command modules add the rest. Importing torch
# alone is > 40×, so any heavy import at registration fails this.
MAX_RATIO = 6.0
RUNS = 7
HEAVY = ("torch", "transformers", "gradio", "duckdb", "pandas", "plotly")


def _env() -> dict[str, str]:
    # Bytecode as a normal install has it: without .pyc every start recompiles the sources.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(REPO)
    return env


def _cpu_s(command: list[str]) -> float:
    """User + system CPU seconds of one run of ``command``."""
    child = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    assert child.returncode == 0, command
    return usage.ru_utime + usage.ru_stime


def test_help_starts_about_as_fast_as_bare_python():
    help_command = [sys.executable, "-m", "spectrum", "--help"]
    subprocess.run(help_command, cwd=REPO, env=_env(), check=True, capture_output=True)  # .pyc
    # Interleaved, best of N: a burst of load hits both commands alike.
    bare = spectrum = float("inf")
    for _ in range(RUNS):
        bare = min(bare, _cpu_s([sys.executable, "-c", "pass"]))
        spectrum = min(spectrum, _cpu_s(help_command))
    ratio = spectrum / bare
    print(f"CPU: spectrum --help {spectrum:.3f} s, python -c pass {bare:.3f} s, {ratio:.1f}×")
    assert spectrum < MAX_RATIO * bare


@pytest.mark.parametrize("command", [None, *command_modules()])
def test_every_help_imports_no_heavy_library(command):
    argv = ["--help"] if command is None else [command, "--help"]
    probe = (
        "import sys\nfrom spectrum.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_help_says_what_the_tool_does():
    done = subprocess.run(
        [sys.executable, "-m", "spectrum", "--help"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "thinking model" in done.stdout and "λ" in done.stdout
    assert "spectrum/commands" not in done.stdout  # where the code lives is for developers
    for command in command_modules():
        assert command in done.stdout
