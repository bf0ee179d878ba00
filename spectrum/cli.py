"""The ``spectrum`` command line: one module per sub-command in ``spectrum/commands/``.

A command module exposes ``register(subparsers)``, which adds its parser and sets
``func`` (called with the parsed args, returning an exit code); it imports heavy
libraries (torch, transformers, gradio) only inside ``func``, so every ``--help`` is
instant. Errors that are the user's fault raise ``UserError``: they print as one line,
no traceback, exit 2 (with the flag that gets past them, when there is one); any other
error prints one line too, exit 1, and its traceback goes to a log file it names. Commands
from outside the library (``spectrum app``, in ``ui/``) are found through the
``thinking_spectrum.commands`` entry point group, so the library never imports the UI.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from spectrum.errors import UserError

_LIBRARY_COMMANDS = (
    "methods", "merge", "generate", "serve", "sweep", "search", "confirm", "report", "analyze",
    "plan", "toy", "bench",
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
    except Exception as error:  # not the user's doing: one line here, the traceback in a log
        reason = str(error).splitlines()[0] if str(error) else ""
        where = _save_traceback(args.command)
        print(
            f"spectrum {args.command}: internal error: {type(error).__name__}: {reason} ({where})",
            file=sys.stderr,
        )
        return 1


def _save_traceback(command: str) -> str:
    """Write the traceback being handled into the log folder; say where (or why not)."""
    import os
    import tempfile
    import time
    import traceback

    from spectrum.weights.filehash import cache_path

    cache = cache_path()
    folder = (cache.parent if cache else Path(tempfile.gettempdir()) / "thinking-spectrum") / "logs"
    log = folder / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        log.write_text(traceback.format_exc())
    except OSError as error:
        return f"the traceback could not be saved: {error.strerror}"
    return f"traceback in {log}"


if __name__ == "__main__":
    sys.exit(main())
