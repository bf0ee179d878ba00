"""The ``spectrum`` command line: one module per sub-command in ``spectrum/commands/``.

A command module exposes ``register(subparsers)``, which adds its parser and sets
``func`` (called with the parsed args, returning an exit code); it imports heavy
libraries (torch, transformers, gradio) only inside ``func``, so every ``--help`` is
instant. Errors that are the user's fault raise ``UserError``: they print as one line,
no traceback, exit 2 (with the flag that gets past them, when there is one). Commands
from outside the library (``spectrum app``, in ``ui/``) are found through the
``thinking_spectrum.commands`` entry point group, so the library never imports the UI.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from spectrum.errors import UserError

_LIBRARY_COMMANDS = (
    "methods", "merge", "generate", "serve", "sweep", "search", "report", "analyze", "plan", "toy",
    "bench",
)  # fmt: skip
_ORDER = ("methods", "merge", "app")  # what a user reaches for first comes first in --help


def command_modules() -> dict[str, str]:
    """Command name → module, the library's and the installed entry points'."""
    from importlib import metadata  # scans every installed package: only when needed

    modules = {name: f"spectrum.commands.{name}" for name in _LIBRARY_COMMANDS}
    for entry in metadata.entry_points(group="thinking_spectrum.commands"):
        modules.setdefault(entry.name, entry.value)
    ranked = sorted(modules, key=lambda n: _ORDER.index(n) if n in _ORDER else len(_ORDER))
    return {name: modules[name] for name in ranked}


DESCRIPTION = """\
Tune how much a language model thinks by merging the weights of a direct (instruct) model
and a thinking model at a strength λ: λ = 0 is the direct model, λ = 1 the thinking one,
and every value in between is a new model. Merge checkpoints, evaluate a λ grid, find the
phase change, write a report, or explore it all in the dashboard (`spectrum app`)."""

EPILOG = "Run `spectrum COMMAND --help` for the options of one command."


def build_parser(commands: dict[str, str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spectrum",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in (commands or command_modules()).values():
        importlib.import_module(module).register(subparsers)
    return parser


def _commands_for(argv: list[str]) -> dict[str, str]:
    # Registering a command imports only its module (heavy libraries wait for ``func``),
    # but a named command still needs only its own parser.
    named = next((arg for arg in argv if not arg.startswith("-")), None)
    if named in _LIBRARY_COMMANDS:
        return {named: f"spectrum.commands.{named}"}
    modules = command_modules()
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
