"""`spectrum app` (and `python app.py`): launch the Gradio dashboard.

It lives in ``ui/`` because it composes the library with the page; the library's CLI finds
it through the ``thinking_spectrum.commands`` entry point (pyproject.toml) and never
imports ``ui/`` by name."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from spectrum.errors import UserError

# spectrum.dashboard.PAGE_SWEEP_LIMITS as text, so --help imports no torch
# (tests/test_inputs_hostile.py checks the two agree).
PAGE_SWEEP_LIMITS = "grid=101, k=16, problems=1000, new_tokens=4096, work=20000000"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    # Environment variables stand in for flags on a Hugging Face Space (no command line).
    parser.add_argument(
        "--direct",
        default=env("SPECTRUM_DIRECT"),
        help="direct (instruct) model: local folder or hub id (default: the embedded pair)",
    )
    parser.add_argument(
        "--thinking",
        default=env("SPECTRUM_THINKING"),
        help="thinking model: local folder or hub id (default: the embedded pair)",
    )
    parser.add_argument("--base", default=env("SPECTRUM_BASE"), help="base model (optional)")
    parser.add_argument(
        "--device", default=env("SPECTRUM_DEVICE", "auto"), help="auto, cpu, cuda or cuda:N"
    )
    parser.add_argument(
        "--db",
        default=env("SPECTRUM_DB"),
        help="results and votes DuckDB file (default: results/spectrum.duckdb, "
        "created as a copy of the shipped assets/spectrum.duckdb)",
    )
    parser.add_argument(
        "--host",
        default=env("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="interface to bind (default 127.0.0.1: this machine only)",
    )
    parser.add_argument(
        "--port", type=int, default=int(env("GRADIO_SERVER_PORT", "7860")), help="port"
    )
    parser.add_argument(
        "--share",
        action="store_true",
        help="also serve through a temporary public gradio.live link (needs internet; "
        "anyone with the link can use the page)",
    )
    parser.add_argument(
        "--allow-dir",
        action="append",
        default=[],
        metavar="FOLDER",
        help="another folder the page may read DB files from and export into (repeatable)",
    )
    parser.add_argument(
        "--max-exports",
        type=int,
        default=5,
        help="most models the page may export while the server runs (default 5)",
    )
    parser.add_argument(
        "--max-export-gb",
        type=float,
        default=100.0,
        help="most gigabytes the page's exports may write while the server runs (default 100)",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read pickle weight files (.bin/.pt/.pth), which can run code (off by default)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=2048,
        help="most tokens one answer may generate (default 2048)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=120.0,
        help="longest one answer may generate, in seconds (default 120)",
    )
    parser.add_argument(
        "--sweep-limits",
        default=env("SPECTRUM_SWEEP_LIMITS", ""),
        metavar="KEY=N,...",
        help="caps on one Sweep-tab sweep, refused before any work: grid (configurations), "
        "k, problems (per benchmark), new_tokens (max new tokens), work (answers × max new "
        f"tokens); defaults: {PAGE_SWEEP_LIMITS}",
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow model repositories to run their own Python code (off by default)",
    )
    parser.add_argument(
        "--ray",
        default=env("SPECTRUM_RAY"),
        metavar="local|auto|ADDRESS",
        help="run the Sweep tab's sweeps on this Ray cluster (the parents must be readable there)",
    )
    parser.add_argument(
        "--history",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="send earlier turns with each message (default: on, except for the embedded "
        "pair, which was trained on single prompts)",
    )
    parser.add_argument(
        "--ray-workers", type=int, help="Ray workers (default: one per GPU, else one on CPU)"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("app", help="launch the Gradio dashboard")
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spectrum.dashboard import return_freed_memory_to_os

    # Freed float32 copies leave RSS, so a re-merge to a new method stays within the
    # planner's figure (bench/RESULTS.md, real-scale rehearsal).
    return_freed_memory_to_os()
    for role in ("direct", "thinking", "base"):
        source = getattr(args, role)
        looks_local = source is not None and (
            source.startswith((".", "/")) or Path(source).exists()
        )
        if looks_local and not Path(source).is_dir():
            raise UserError(f"--{role} {source} is not a model folder")
    if args.max_new_tokens < 1 or not args.max_seconds > 0:
        raise UserError("--max-new-tokens and --max-seconds must be positive")
    if args.max_exports < 0 or not 0 <= args.max_export_gb < math.inf:
        raise UserError("--max-exports and --max-export-gb must be finite numbers, 0 or more")
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port} is not a port number")
    if (args.direct is None) != (args.thinking is None):
        raise UserError("give both --direct and --thinking, or neither (the embedded pair)")
    # Gradio and the models load only now, so `spectrum --help` stays fast.
    from spectrum.dashboard import (
        DEFAULT_DB,
        ChatLimits,
        Dashboard,
        ExportQuota,
        SweepLimits,
        pair_sources,
    )
    from spectrum.dashboard import PAGE_SWEEP_LIMITS as page_limits
    from ui.app import launch

    sweep_limits = SweepLimits.parse(args.sweep_limits, page_limits)

    direct, thinking, base = pair_sources(args.direct, args.thinking, args.base)
    dashboard = Dashboard(
        direct,
        thinking,
        base,
        device=args.device,
        db=args.db or DEFAULT_DB,
        allowed_folders=args.allow_dir,
        trust_remote_code=args.trust_remote_code,
        allow_pickle=args.allow_pickle,
        limits=ChatLimits(args.max_new_tokens, args.max_seconds),
        export_quota=ExportQuota(args.max_exports, int(args.max_export_gb * 1e9)),
        ray=args.ray,
        ray_workers=args.ray_workers,
        history=args.history,
        sweep_limits=sweep_limits,
    )
    print(f"Thinking Spectrum — {dashboard.describe()}", flush=True)
    launch(dashboard, host=args.host, port=args.port, share=args.share)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python app.py [flags]``: the same as ``spectrum app [flags]``."""
    from spectrum.cli import main as cli_main

    return cli_main(["app", *(argv or [])])
