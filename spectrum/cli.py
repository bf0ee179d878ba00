"""`spectrum` command line: each sub-command lives in ``spectrum/commands/<name>.py``.

A command module exposes ``register(subparsers)``, which adds its parser and sets
``func`` (called with the parsed args, returning an exit code). Errors that are the
user's fault raise ``UserError``: they print as one line, no traceback, exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from spectrum.errors import UserError

_COMMAND_MODULES = (
    "methods",
    "merge",
    "app",
    "sweep",
    "search",
    "report",
    "analyze",
    "toy",
    "bench",
    "plan",
)


def build_parser(commands: tuple[str, ...] = _COMMAND_MODULES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spectrum", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in commands:
        importlib.import_module(f"spectrum.commands.{module}").register(subparsers)
    return parser


def _commands_for(argv: list[str]) -> tuple[str, ...]:
    # Importing every command pulls in transformers, gradio and the toy trainer (seconds):
    # when the command is named, register only that one; otherwise (help, typos) all.
    named = next((arg for arg in argv if not arg.startswith("-")), None)
    return (named,) if named in _COMMAND_MODULES else _COMMAND_MODULES


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_commands_for(argv)).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        print(f"spectrum {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
