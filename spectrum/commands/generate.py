"""`spectrum generate`: answer one prompt at several λ, all in one batch (spectrum model),
or λ by λ on a live merger when the spectrum model cannot serve the method or pair."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from spectrum.commands.sweep import SWEEP_LIMITS, limits_from_args
from spectrum.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="answer one prompt at several λ in one batch (affine methods)",
        description="Load one spectrum model (the parents' E₀/E₁ of an affine merge) and "
        "answer a prompt at every λ of --lams in one batch, without re-merging. A method or "
        "pair the spectrum model cannot serve is re-merged for each λ instead (said once).",
    )
    parser.add_argument("--direct", required=True, help="direct (instruct) parent folder")
    parser.add_argument("--thinking", required=True, help="thinking parent folder")
    parser.add_argument("--base", help="base model, for methods built on task vectors")
    parser.add_argument("--method", default="linear", help="an affine merge method")
    parser.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="method parameter"
    )
    parser.add_argument("--lams", required=True, help="λ values, comma-separated: 0,0.3,0.6,1")
    parser.add_argument("--prompt", required=True, help="the user message")
    parser.add_argument("--raw", action="store_true", help="no chat template: the prompt as is")
    parser.add_argument(
        "--template",
        choices=("direct", "thinking"),
        default="thinking",
        help="whose chat template a merge (λ > 0) answers with, as sweeps and serve do "
        "(default: thinking, the one an export carries); λ = 0 always the direct parent's",
    )
    parser.add_argument("--greedy", action="store_true", help="greedy decoding")
    parser.add_argument("--temperature", type=float, help="override the per-λ default")
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0, help="merge seed (DARE) and sampling seed")
    parser.add_argument("--layers", help="decoder layers to merge, e.g. 12-35 or 0-3,8")
    parser.add_argument("--modules", help="module kinds to merge: attn,mlp,embed,norm,lm_head")
    parser.add_argument("--lam-schedule", help="per-layer λ over depth, e.g. 0.5,0.9")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line per λ")
    parser.add_argument(
        "--limits",
        default="",
        metavar="KEY=N,...",
        help="caps, refused before the model loads: grid (λs in the batch), new_tokens "
        f"(max new tokens), work (λs × max new tokens); defaults: {SWEEP_LIMITS}",
    )
    parser.set_defaults(func=run)


def parse_floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(item) for item in text.split(","))
    except ValueError:
        raise UserError(f"{flag} {text!r}: write numbers separated by commas") from None


def parse_params(items: list[str]) -> dict[str, str]:
    params = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UserError(f"bad --param {item!r}; write NAME=VALUE")
        params[name.strip()] = value.strip()
    return params


def run(args: argparse.Namespace) -> int:
    # Heavy imports here, so `spectrum --help` stays fast.
    from spectrum.generate.batch import DecodingSettings
    from spectrum.live.spectrum_generate import SpectrumGenerator, unit_seed
    from spectrum.live.spectrum_model import SpectrumModel, check_lams
    from spectrum.live.spectrum_modules import SpectrumUnavailable
    from spectrum.merge.scope import MergeScope

    lams = parse_floats(args.lams, "--lams")
    check_lams(lams)  # before the model loads
    limits = limits_from_args(args)
    limits.check("--lams", len(lams), "grid")
    limits.check("--max-new-tokens", args.max_new_tokens, "new_tokens")
    limits.check("the batch (λs × max new tokens)", len(lams) * args.max_new_tokens, "work")
    overrides = dict(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                     max_new_tokens=args.max_new_tokens)  # fmt: skip
    if args.greedy:
        overrides["do_sample"] = False
    # Decoding values in range before the model loads, too.
    settings = [DecodingSettings.for_lam(lam, **overrides) for lam in lams]
    scope = MergeScope(
        args.layers,
        tuple(args.modules.split(",")) if args.modules else None,
        parse_floats(args.lam_schedule, "--lam-schedule") if args.lam_schedule else None,
    )
    params = parse_params(args.param)
    batch_size = len(lams)
    try:
        spectrum = SpectrumModel.load(
            args.direct, args.thinking, args.base, method=args.method,
            params=params, seed=args.seed, scope=scope, device=args.device,
        )  # fmt: skip
    except SpectrumUnavailable as why:
        print(f"note: {why}; re-merging for each λ instead", file=sys.stderr)
        spectrum = remerged(args, params, scope)
        batch_size = 1  # one λ per batch: the live merger holds one merge at a time
    prompts = [args.prompt] * len(lams) if args.raw else templated(args, spectrum.tokenizer, lams)
    generator = SpectrumGenerator(spectrum, batch_size=batch_size)
    # Each λ samples from its own seed: its answer does not depend on the other λs asked.
    seeds = [unit_seed(args.seed, lam) for lam in lams]
    gens = generator.generate_rows(prompts, lams, settings, seeds)
    for lam, row_settings, gen in zip(lams, settings, gens, strict=True):
        if args.json:
            record = dict(lam=lam, text=gen.text, n_tokens=gen.n_tokens, finished=gen.finished,
                          spec=spectrum.spec(lam), decoding=row_settings.as_dict())  # fmt: skip
            print(json.dumps(record, ensure_ascii=False))
        else:
            print(f"--- λ={lam:g} ({gen.n_tokens} tokens{'' if gen.finished else ', truncated'})")
            print(gen.text)
    return 0


def templated(
    args: argparse.Namespace, direct_tokenizer: Any, lams: tuple[float, ...]
) -> list[str]:
    """The prompt of each λ under the template sweeps and serve give it: λ = 0 the direct
    parent's, a merge ``--template``'s (the parents share one vocabulary, so only the
    template differs)."""
    from spectrum.generate.batch import chat_prompts
    from spectrum.generate.template import load_tokenizer

    conversation = [{"role": "user", "content": args.prompt}]
    tokenizers = {"direct": direct_tokenizer}
    if any(lam != 0 for lam in lams) and args.template == "thinking":
        tokenizers["thinking"] = load_tokenizer(args.thinking)
    return [
        chat_prompts(tokenizers["direct" if lam == 0 else args.template], [conversation])[0]
        for lam in lams
    ]


def remerged(args: argparse.Namespace, params: dict, scope):
    """The per-λ fallback: a live merger, re-merged before each λ's generation."""
    from spectrum.live.hf import LiveMerger
    from spectrum.live.spectrum_generate import RemergedSpectrum
    from spectrum.merge.spec import MergeSpec

    merger = LiveMerger.load(args.direct, args.thinking, args.base, device=args.device)
    # Checked once here: a bad parameter fails before any generation.
    checked = MergeSpec(args.method, 0.0, params, seed=args.seed).checked(
        has_base=merger.parents.base is not None
    )
    return RemergedSpectrum(
        merger, method=args.method, params=dict(checked.params), seed=args.seed, scope=scope
    )
