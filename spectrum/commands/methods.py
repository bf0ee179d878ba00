"""`spectrum methods`: list the registered merge methods with their parameters."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("methods", help="list merge methods and their parameters")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spectrum.methods import REGISTRY

    for method in REGISTRY.values():
        base = "  (needs --base)" if method.needs_base else ""
        print(f"{method.name}: {method.summary}{base}")
        for param in method.params:
            kind = param.type.__name__
            print(f"    {param.name} ({kind}, default {param.default!r}): {param.help}")
    return 0
