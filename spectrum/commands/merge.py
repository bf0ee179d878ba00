"""`spectrum merge`: merge a direct and a thinking checkpoint into a new model folder."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from spectrum.errors import UserError

if TYPE_CHECKING:
    from spectrum.merge import MergeConfig

# Flags whose values map one to one onto MergeConfig keys (None = not given on the CLI).
_KEYS = (
    "direct", "thinking", "base", "method", "seed", "layers", "modules",
    "lam_schedule", "device", "copy_from", "max_shard_size",
)  # fmt: skip
_SWITCHES = ("allow_pickle", "allow_extrapolation")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "merge",
        help="merge a direct and a thinking model at strength λ",
        description="Merge a direct and a thinking checkpoint (λ = 0 direct, 1 thinking). "
        "Flags override the keys of --config.",
    )
    parser.add_argument(
        "--config", help="YAML/JSON file with the same keys (or a merge_config.json)"
    )
    parser.add_argument("--direct", help="direct (instruct) parent: local folder or hub id")
    parser.add_argument("--thinking", help="thinking parent: local folder or hub id")
    parser.add_argument("--base", help="base model, for methods built on task vectors")
    parser.add_argument("--method", help="merge method (see `spectrum methods`); default linear")
    parser.add_argument(
        "--lam",
        help="merge strength λ: 0 = direct, 1 = thinking; KIND=λ pairs give module kinds their "
        "own λ, e.g. 0.5,attn=0.8,mlp=0.3 (kinds: attn, mlp, embed, norm, lm_head)",
    )
    parser.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="method parameter"
    )
    parser.add_argument("--layers", help="decoder layers to merge, e.g. 12-35 or 0-3,8")
    parser.add_argument("--modules", help="module kinds to merge: attn,mlp,embed,norm,lm_head")
    parser.add_argument("--lam-schedule", help="per-layer λ over depth, e.g. 0.5,0.9")
    parser.add_argument("--seed", type=int, help="seed of random choices (DARE masks)")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), help="default auto")
    parser.add_argument(
        "--copy-from", choices=("direct", "thinking"), help="parent whose config/tokenizer to copy"
    )
    parser.add_argument("--max-shard-size", help="largest output shard, e.g. 5GB (default)")
    parser.add_argument("--out", required=True, help="output folder (must not exist)")
    parser.add_argument(
        "--force", action="store_true", help="replace an earlier output of spectrum merge"
    )
    parser.add_argument("--allow-pickle", action="store_true", default=None)
    parser.add_argument("--allow-extrapolation", action="store_true", default=None)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> MergeConfig:
    from spectrum.merge import MergeConfig
    from spectrum.merge.spec import parse_lam_text

    data = MergeConfig.from_file(args.config).to_dict() if args.config else {}
    data.update(
        {key: getattr(args, key) for key in _KEYS + _SWITCHES if getattr(args, key) is not None}
    )
    if args.lam is not None:
        data["lam"], module_lams = parse_lam_text(args.lam)
        data["module_lams"] = dict(module_lams) if module_lams else None
    params = dict(data.get("params") or {})
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UserError(f"bad --param {item!r}; write NAME=VALUE")
        params[name.strip()] = value.strip()
    data["params"] = params
    return MergeConfig.from_dict(data)


def run(args: argparse.Namespace) -> int:
    import logging

    from spectrum.devices import return_freed_memory_to_os
    from spectrum.merge import merge_checkpoints

    logging.basicConfig(format="spectrum merge: warning: %(message)s", stream=sys.stderr)
    return_freed_memory_to_os()
    config = config_from_args(args)
    out = merge_checkpoints(config, args.out, force=args.force, progress=not args.quiet)
    print(f"merged {config.spec.method} at λ={config.spec.lam} into {out}")
    return 0
