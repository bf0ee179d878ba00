"""Cost of `apply` (a new λ) against `prepare` (the λ-independent part), per merge method.

On one random N×N float32 tensor (default 4096×4096, a Qwen3-4B-sized projection), times
each method's prepare, its whole-model statistics pass (over this one tensor) and apply,
and prints them as ratios to a plain ``a + lam*b`` on the same tensors timed in the same
run. apply is timed at a λ the statistics were built for and, for the global Top-K
strategies, at a new λ (one refinement pass). Usage:

    python bench/methods_apply.py [--size 4096] [--repeats 3] [--methods "linear;ties;..."]

A method may carry parameters, separated by ";": --methods "twin:variant=svd;lore:mu=0.2".
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from spectrum.methods import REGISTRY, Parents, get_method, resolve_params

NAME = "model.layers.0.mlp.down_proj.weight"


def best_of(repeats: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(spec: str, parents: Parents, repeats: int) -> dict[str, float]:
    """``spec`` is a method name, optionally with parameters: ``twin:variant=svd``."""
    name, _, given = spec.partition(":")
    method = get_method(name)
    params = resolve_params(method, dict(item.split("=", 1) for item in given.split(",") if item))
    start = time.perf_counter()
    prepared = method.prepare(parents, params, 0)
    figures = {"prepare": time.perf_counter() - start}
    stats = None
    if method.global_stats is not None:
        start = time.perf_counter()
        stats = method.global_stats(lambda: iter([(NAME, prepared)]), [0.5], params)
        figures["stats"] = time.perf_counter() - start
    figures["apply"] = best_of(repeats, lambda: method.apply(prepared, 0.5, params, stats))
    if method.global_stats is not None:
        # A λ the statistics have not seen: what the live merger's slider costs.
        fresh = iter(range(repeats))
        figures["apply_new_lam"] = best_of(
            repeats, lambda: method.apply(prepared, 0.61 + 0.01 * next(fresh), params, stats)
        )
    return figures


RATIO_KEYS = ("prepare", "stats", "apply", "apply_new_lam")


def ratio(figures: dict[str, float], key: str, baseline: float) -> str:
    return f"{figures[key] / baseline:.1f}" if key in figures else "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", default=";".join(REGISTRY))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    shape = (args.size, args.size)
    base = torch.randn(shape, generator=generator)
    direct = base + 0.05 * torch.randn(shape, generator=generator)
    thinking = base + 0.05 * torch.randn(shape, generator=generator)
    parents = Parents(NAME, direct, thinking, base)
    baseline = best_of(args.repeats, lambda: direct + 0.5 * thinking)
    print(f"{args.size}×{args.size} float32, {args.threads} thread(s), best of {args.repeats}")
    print(f"baseline a + lam*b: {baseline * 1e3:.1f} ms\n")
    print("| method | prepare s | prepare ×base | stats ×base | apply ×base | apply new λ ×base |")
    print("|---|---|---|---|---|---|")
    for spec in args.methods.split(";"):
        figures = measure(spec, parents, args.repeats)
        ratios = [ratio(figures, key, baseline) for key in RATIO_KEYS]
        print(f"| {spec} | {figures['prepare']:.2f} | {' | '.join(ratios)} |", flush=True)


if __name__ == "__main__":
    main()
