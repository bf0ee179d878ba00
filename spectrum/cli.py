"""`spectrum` command line: each sub-command lives in ``spectrum/commands/<name>.py``.

A command module exposes ``register(subparsers)``, which adds its parser and sets
``func`` (called with the parsed args, returning an exit code). Errors that are the
user's fault raise ``UserError``: they print as one line, no traceback, exit 2 (with the
flag that gets past them, when there is one). Commands from outside the library
(``spectrum app``, in ``ui/``) are found through the ``thinking_spectrum.commands`` entry
point group, so the library never imports the UI.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib import metadata

from spectrum.errors import UserError

_LIBRARY_COMMANDS = (
    "methods", "merge", "generate", "sweep", "search", "report", "analyze", "toy", "bench",
)  # fmt: skip
_ORDER = ("methods", "merge", "app")  # what a user reaches for first comes first in --help


def command_modules() -> dict[str, str]:
    """Command name → module, the library's and the installed entry points'."""
    modules = {name: f"spectrum.commands.{name}" for name in _LIBRARY_COMMANDS}
    for entry in metadata.entry_points(group="thinking_spectrum.commands"):
        modules.setdefault(entry.name, entry.value)
    ranked = sorted(modules, key=lambda n: _ORDER.index(n) if n in _ORDER else len(_ORDER))
    return {name: modules[name] for name in ranked}


def build_parser(commands: dict[str, str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spectrum", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in (commands or command_modules()).values():
        importlib.import_module(module).register(subparsers)
    return parser


def _commands_for(argv: list[str]) -> dict[str, str]:
    # Importing every command pulls in transformers, gradio and the toy trainer (seconds):
    # when the command is named, register only that one; otherwise (help, typos) all.
    modules = command_modules()
    named = next((arg for arg in argv if not arg.startswith("-")), None)
    return {named: modules[named]} if named in modules else modules


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_commands_for(argv)).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        print(f"spectrum {args.command}: error: {error.for_cli()}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
