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
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spectrum", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in _COMMAND_MODULES:
        importlib.import_module(f"spectrum.commands.{module}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        print(f"spectrum {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
