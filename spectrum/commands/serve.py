"""`spectrum serve`: every merge of the pair behind one OpenAI-compatible endpoint."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from spectrum.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve every λ behind one OpenAI-compatible endpoint",
        description="Serve the pair's merges over HTTP as OpenAI's /v1/chat/completions, "
        "/v1/completions and /v1/models. The request's model names the merge: direct, "
        "thinking, METHOD@LAM (linear@0.7, slerp@0.6), linear@0.5,attn=0.8; the body "
        "fields lam and reasoning_effort (low|medium|high) set λ. Thinking comes back in "
        "reasoning_content, the answer in content. docs/SERVE.md has the details.",
    )
    parser.add_argument("--direct", help="direct parent folder (default: the embedded pair)")
    parser.add_argument("--thinking", help="thinking parent folder (default: the embedded pair)")
    parser.add_argument("--base", help="base model, for methods built on task vectors")
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument(
        "--db", help="results DB: reasoning_effort maps to the smallest λ reaching its target"
    )
    parser.add_argument("--effort-benchmark", help="benchmark of --db to map efforts from")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("SPECTRUM_API_KEY"),
        help="require this key (Authorization: Bearer KEY); default $SPECTRUM_API_KEY, or none",
    )
    parser.add_argument("--max-new-tokens", type=int, default=2048, help="most tokens per answer")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="longest answer, s")
    parser.add_argument("--max-batch", type=int, default=16, help="rows decoded together")
    parser.add_argument(
        "--allow-pickle", action="store_true", help="read pickle weight files (can run code)"
    )
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="let model repositories run code"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port} is not a port number")
    if args.max_new_tokens < 1 or not args.max_seconds > 0 or args.max_batch < 1:
        raise UserError("--max-new-tokens, --max-seconds and --max-batch must be positive")
    if (args.direct is None) != (args.thinking is None):
        raise UserError("give both --direct and --thinking, or neither (the embedded pair)")
    for role in ("direct", "thinking", "base"):
        source = getattr(args, role)
        if source is not None and source.startswith((".", "/")) and not Path(source).is_dir():
            raise UserError(f"--{role} {source} is not a model folder")
    # Heavy imports here, so `spectrum --help` stays fast.
    import uvicorn

    from spectrum.dashboard.service import SHIPPED_DB, ChatLimits, Dashboard, pair_sources
    from spectrum.serve.api import create_app
    from spectrum.serve.names import DEFAULT_EFFORT_LAMS, effort_lams_from_db
    from spectrum.serve.service import ServeLimits, Service

    effort_lams = DEFAULT_EFFORT_LAMS
    if args.db is not None:  # before the models load: a bad DB costs nothing
        effort_lams = effort_lams_from_db(args.db, args.effort_benchmark)
    direct, thinking, base = pair_sources(args.direct, args.thinking, args.base)
    dashboard = Dashboard(
        direct,
        thinking,
        base,
        device=args.device,
        # Read only (votes are the page's): the shipped file, so nothing is copied.
        db=args.db or SHIPPED_DB,
        trust_remote_code=args.trust_remote_code,
        allow_pickle=args.allow_pickle,
        limits=ChatLimits(args.max_new_tokens, args.max_seconds),
    )
    service = Service(dashboard, effort_lams=effort_lams,
                      limits=ServeLimits(max_batch=args.max_batch))  # fmt: skip
    app = create_app(service, api_key=args.api_key)
    efforts = ", ".join(f"{name} λ {lam:g}" for name, lam in effort_lams.items())
    print(f"spectrum serve: http://{args.host}:{args.port}/v1 (reasoning_effort: {efforts})",
          flush=True)  # fmt: skip
    # In-flight answers end within --max-seconds: shutdown waits that long, then cancels.
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                            timeout_graceful_shutdown=int(args.max_seconds) + 5)  # fmt: skip
    try:
        uvicorn.Server(config).run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down gracefully for
        pass
    return 0
