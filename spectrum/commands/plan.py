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
    parser.add_argument(
        "--markdown", action="store_true", help="print a Markdown table (for a README)"
    )
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
    needs = plan_pair(pair, hardware, args.method)
    print(format_plan(pair, hardware, needs, args.method, markdown=args.markdown))
    return 0


def _cuda(device: str):
    from spectrum.weights.planner import Hardware, available_host_bytes, local_hardware

    try:
        return local_hardware(device)
    except (RuntimeError, AssertionError):  # no CUDA here: plan for an unknown GPU
        return Hardware("cuda", None, available_host_bytes())


def size(n_bytes: int | float) -> str:
    """GiB with one decimal, MiB below 1 GiB: a toy pair's 7 MB never reads as "0.0 GiB"."""
    if n_bytes >= 2**30:
        return f"{n_bytes / 2**30:.1f} GiB"
    return f"{n_bytes / 2**20:.1f} MiB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.0f} KiB"


HEADER = ("use", "policy", "GPU", "host", "fits", "smallest GPU", "smallest Space", "note")


def format_plan(pair, hardware, needs, method: str, *, markdown: bool = False) -> str:
    gpu = "unknown GPU" if hardware.gpu_bytes is None else f"{size(hardware.gpu_bytes)} GPU"
    where = f"{gpu}, {size(hardware.host_bytes)} host" if hardware.device == "cuda" else "CPU"
    title = (
        f"pair: {pair.label}; parents {', '.join(size(b) for b in pair.parent_bytes)}; "
        f"method {method}; planned for {where}"
    )
    rows = [
        (
            need.use,
            need.policy,
            size(need.device_bytes) if need.device_bytes else "—",
            size(need.host_bytes),
            {True: "yes", False: "no", None: "?"}[need.fits],
            need.smallest_gpu or "—",
            need.smallest_space or "—",
            need.note,
        )
        for need in needs
    ]
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in (HEADER, ("---",) * len(HEADER), *rows)]
        return "\n".join([title, "", *lines])
    # A terminal gets columns padded to their widest cell; the note, last, is left free.
    widths = [max(len(row[i]) for row in (HEADER, *rows)) for i in range(len(HEADER) - 1)]
    lines = [
        "  ".join(
            [*(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)), row[-1]]
        )
        for row in (HEADER, *rows)
    ]
    rule = "  ".join("─" * width for width in widths) + "  ────"
    return "\n".join([title, "", lines[0].rstrip(), rule, *(line.rstrip() for line in lines[1:])])
