"""`spectrum plan`: what each use of a pair needs, from configs and headers alone."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="memory each use of a pair needs, and the hardware that holds it",
        description="Read the pair's configs and safetensors headers (no weights) and print, "
        "per use, bytes on the GPU and on the host, whether it fits, the memory policy and "
        "the smallest common GPU / Hugging Face Space that holds it.",
    )
    parser.add_argument("--direct", required=True, help="direct (instruct) parent folder")
    parser.add_argument("--thinking", required=True, help="thinking parent folder")
    parser.add_argument("--base", help="base model folder (methods built on task vectors)")
    parser.add_argument("--method", default="linear", help="merge method planned (default linear)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--gpu-memory", help="GPU memory to plan for, e.g. 80GB (default: free)")
    parser.add_argument("--host-memory", help="host RAM to plan for, e.g. 128GB (default: free)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from spectrum.weights.planner import local_hardware, parse_bytes, plan_pair, read_pair

    gpu = parse_bytes(args.gpu_memory) if args.gpu_memory else None
    device = args.device
    if device == "auto" and gpu is not None:
        device = "cuda"  # a GPU size was given: plan for it even on a machine without one
    hardware = local_hardware(device, gpu) if device != "cuda" or gpu else _cuda(device)
    if args.host_memory:
        hardware = replace(hardware, host_bytes=parse_bytes(args.host_memory))
    pair = read_pair(args.direct, args.thinking, args.base)
    print(format_plan(pair, hardware, plan_pair(pair, hardware, args.method), args.method))
    return 0


def _cuda(device: str):
    from spectrum.weights.planner import Hardware, available_host_bytes, local_hardware

    try:
        return local_hardware(device)
    except (RuntimeError, AssertionError):  # no CUDA here: plan for an unknown GPU
        return Hardware("cuda", None, available_host_bytes())


def format_plan(pair, hardware, needs, method: str) -> str:
    from spectrum.weights.planner import gib

    gpu = "unknown GPU" if hardware.gpu_bytes is None else f"{gib(hardware.gpu_bytes)} GPU"
    where = f"{gpu}, {gib(hardware.host_bytes)} host" if hardware.device == "cuda" else "CPU"
    lines = [
        f"pair: {pair.label}; parents {', '.join(gib(b) for b in pair.parent_bytes)}; "
        f"method {method}; planned for {where}",
        "",
        "| use | policy | GPU | host | fits | smallest GPU | smallest Space | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for need in needs:
        fits = {True: "yes", False: "no", None: "?"}[need.fits]
        device = gib(need.device_bytes) if need.device_bytes else "—"
        lines.append(
            f"| {need.use} | {need.policy} | {device} | {gib(need.host_bytes)} | {fits} "
            f"| {need.smallest_gpu or '—'} | {need.smallest_space or '—'} | {need.note} |"
        )
    return "\n".join(lines)
