"""One spectrum model decoding a whole λ grid in one batch, against re-merge + decode per λ.

(a) **Sweep decode**: greedy decoding of ``--prompts`` prompts at every λ of an 11-point
grid. *per-λ*: what the sweep did before, for each λ a live ``set()`` (in-place re-merge)
then a decode of the prompts' batch. *batched*: one ``SpectrumModel.generate`` of
prompts × λ rows. Every row generates exactly ``--new-tokens`` tokens (``min_new_tokens``),
so both sides produce the same token count; tokens/s = generated tokens ÷ seconds
(re-merges included on the per-λ side); the greedy tokens are checked to agree. Both are
loaded side by side and timed in ``--rounds`` alternating rounds; each side's best round
counts, in wall seconds and in this process's CPU seconds (the latter is steadier on a
shared machine, where other processes take the cores for a while).

(b) **Dashboard memory**: bytes of the tensors each design holds, summed once per storage
(a tensor shared by two holders counts once). Today the dashboard holds the two parents
as plain models (its direct and thinking columns) and a live merger (both parents on the
host, the loaded model, the method's prepared tensors; ``linear``'s prepared tensors *are*
the host parents on a CPU merger, so they count once). The spectrum model serves all three
columns (its λ = 0 and λ = 1 rows are the parents): its parameters, E₁ copies, buffers.

Models: random parents written to a temporary folder in float32: ``small`` is
bench/live_remerge.py's shape; ``qwen3-0.6b`` is Qwen3-0.6B's config (hidden 1024, 16/8
heads of 128, MLP 3072, 151,936-token tied embedding) with its 28 layers cut to
``--layers`` (default 4) so a run fits in a few minutes on a CPU. Usage:

    python bench/spectrum_batch.py [--shape small|qwen3-0.6b] [--prompts 4] [--rounds 2]
                                   [--memory-methods linear,dare] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

import torch
from live_remerge import SHAPES as REMERGE_SHAPES  # bench/ is on sys.path
from transformers import AutoModelForCausalLM, Qwen3Config

from spectrum.live import LiveMerger
from spectrum.live.spectrum_model import SpectrumModel
from spectrum.merge import MergeSpec
from spectrum.methods import get_method
from spectrum.toy.tokenizer import build_char_tokenizer

SHAPES = {
    "small": REMERGE_SHAPES["small"],  # the live re-merge benchmark's CPU shape
    "qwen3-0.6b": dict(  # Qwen3-0.6B's config.json shapes (layers cut by --layers)
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
}
ROLES = ("direct", "thinking")
GRID = [round(i / 10, 1) for i in range(11)]


def write_pair(folder: Path, shape: str, layers: int | None) -> dict[str, Path]:
    """A random base and two children that differ from it by seeded noise, in float32."""
    overrides = {} if layers is None else dict(num_hidden_layers=layers)
    config = Qwen3Config(**{**SHAPES[shape], **overrides}, eos_token_id=2, pad_token_id=0,
                         bos_token_id=None)  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    base = {name: p.detach().clone() for name, p in model.named_parameters()}
    paths = {"base": folder / "base"}
    model.save_pretrained(paths["base"], max_shard_size="2GB")
    build_char_tokenizer().save_pretrained(paths["base"])
    for seed, role in enumerate(("direct", "thinking"), start=1):
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in model.named_parameters():
                noise = torch.randn(param.shape, generator=generator)
                param.copy_(base[name] + 0.05 * base[name].abs().mean() * noise)
        paths[role] = folder / role
        model.save_pretrained(paths[role], max_shard_size="2GB")
        build_char_tokenizer().save_pretrained(paths[role])
    return paths


def held_bytes(tensors) -> int:
    """Bytes of the given tensors, each underlying storage counted once."""
    storages = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def merger_tensors(merger: LiveMerger):
    parents = merger.parents
    for tensors in (parents.direct, parents.thinking, parents.base or {}):
        yield from tensors.values()
    yield from merger.model.parameters()
    yield from merger.model.buffers()
    for prepared in merger._prepared.prepared.values():
        yield from prepared.values()


def memory(paths: dict[str, Path], methods: list[str]) -> dict[str, dict[str, int]]:
    """Bytes held per method: the dashboard today (its two plain parent models for the
    direct and thinking columns, plus the live merger after one set()) and the spectrum
    model, which serves all three columns (λ = 0 and 1 rows are the parents)."""
    held = {}
    for method in methods:
        base = paths["base"] if get_method(method).needs_base else None
        parents = [AutoModelForCausalLM.from_pretrained(paths[role]) for role in ROLES]
        merger = LiveMerger.load(paths["direct"], paths["thinking"], base, device="cpu")
        merger.set(MergeSpec(method, 0.5))
        plain = [t for model in parents for t in (*model.parameters(), *model.buffers())]
        today = held_bytes([*plain, *merger_tensors(merger)])
        del merger, parents, plain
        gc.collect()
        spectrum = SpectrumModel.load(paths["direct"], paths["thinking"], base, method=method,
                                      device="cpu")  # fmt: skip
        held[method] = dict(today_bytes=today, spectrum_bytes=spectrum.held_bytes())
        del spectrum
        gc.collect()
    return held


def prompts(vocab: int, count: int, length: int) -> torch.Tensor:
    return torch.randint(3, vocab, (count, length), generator=torch.Generator().manual_seed(1))


class Clock:
    """Wall and CPU seconds of a block (CPU time: this process, user + system)."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def per_lam(merger: LiveMerger, ids: torch.Tensor, new_tokens: int) -> tuple[Clock, float, list]:
    """set() + decode for every λ: the clock, the seconds spent merging, the tokens."""
    merge_s, outputs = 0.0, []
    with Clock() as clock:
        for lam in GRID:
            merge_s += merger.set(MergeSpec("linear", lam)).set_ms / 1e3
            outputs.append(decode(merger.model.generate, ids, new_tokens))
    return clock, merge_s, outputs


def decode(generate, ids: torch.Tensor, new_tokens: int, **kwargs) -> torch.Tensor:
    with torch.inference_mode():
        out = generate(ids, do_sample=False, max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, pad_token_id=0, **kwargs)  # fmt: skip
    return out[:, ids.shape[1] :]


def batched(spectrum: SpectrumModel, ids: torch.Tensor, new_tokens: int) -> tuple[Clock, list]:
    rows = ids.repeat(len(GRID), 1)  # λ-major: rows of λ i are i·P … i·P + P − 1
    lams = [lam for lam in GRID for _ in range(ids.shape[0])]
    with Clock() as clock:
        out = decode(spectrum.generate, rows, new_tokens, lams=lams)
    return clock, list(out.split(ids.shape[0]))


def run(args: argparse.Namespace, folder: Path) -> dict:
    """Both designs loaded side by side, timed in alternating rounds; best round each."""
    paths = write_pair(folder, args.shape, args.layers if args.shape == "qwen3-0.6b" else None)
    merger = LiveMerger.load(paths["direct"], paths["thinking"], device="cpu")
    spectrum = SpectrumModel.load(paths["direct"], paths["thinking"], device="cpu")
    ids = prompts(merger.model.config.vocab_size, args.prompts, args.prompt_tokens)
    merger.set(MergeSpec("linear", 0.5))
    decode(merger.model.generate, ids, 2)  # warm-up: first-call costs out of the timing
    decode(spectrum.generate, ids, 2, lams=[0.5] * len(ids))
    rounds = []
    for _ in range(args.rounds):
        # Alternating, so that the load of this shared machine hits both sides alike.
        per_lam_clock, merge_s, reference = per_lam(merger, ids, args.new_tokens)
        batched_clock, outputs = batched(spectrum, ids, args.new_tokens)
        same = all(torch.equal(a, b) for a, b in zip(reference, outputs, strict=True))
        rounds.append((per_lam_clock, merge_s, batched_clock, same))
    del merger, spectrum
    gc.collect()
    tokens = len(GRID) * args.prompts * args.new_tokens
    per_lam_wall = min(r[0].wall for r in rounds)
    batched_wall = min(r[2].wall for r in rounds)
    per_lam_cpu = min(r[0].cpu for r in rounds)
    batched_cpu = min(r[2].cpu for r in rounds)
    return dict(
        shape=args.shape,
        layers=int(
            args.layers if args.shape == "qwen3-0.6b" else SHAPES["small"]["num_hidden_layers"]
        ),
        dtype="float32",
        threads=torch.get_num_threads(),
        prompts=args.prompts,
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        lams=len(GRID),
        rounds=args.rounds,
        per_lam_tok_s=tokens / per_lam_wall,
        per_lam_merge_s=min(r[1] for r in rounds),
        batched_tok_s=tokens / batched_wall,
        speedup=per_lam_wall / batched_wall,
        per_lam_tok_cpu_s=tokens / per_lam_cpu,
        batched_tok_cpu_s=tokens / batched_cpu,
        cpu_speedup=per_lam_cpu / batched_cpu,
        same_tokens=all(r[3] for r in rounds),
        memory=memory(paths, args.memory_methods.split(",")) if args.memory_methods else {},
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=tuple(SHAPES), default="small")
    parser.add_argument("--layers", type=int, default=4, help="qwen3-0.6b: layers kept")
    parser.add_argument("--prompts", type=int, default=4, help="problems per batch")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    parser.add_argument("--rounds", type=int, default=2, help="alternating timing rounds")
    parser.add_argument(
        "--memory-methods",
        default="linear,task_arithmetic,dare,twin,lore",
        help="methods whose held bytes are measured ('' for none; lore's SVDs take long "
        "on qwen3-0.6b's embedding)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        row = run(args, Path(folder))
    if args.json:
        print(json.dumps(row))
        return
    print(
        f"{row['shape']} ({row['layers']} layers, {row['prompts']} prompts × {row['lams']} λ, "
        f"{row['new_tokens']} new tokens, best of {row['rounds']}): per-λ "
        f"{row['per_lam_tok_s']:.1f} tok/s (re-merges {row['per_lam_merge_s']:.2f} s), "
        f"batched {row['batched_tok_s']:.1f} tok/s → {row['speedup']:.2f}× wall, "
        f"{row['cpu_speedup']:.2f}× CPU time; same tokens: {row['same_tokens']}"
    )
    for method, held in row["memory"].items():
        today, spectrum = held["today_bytes"], held["spectrum_bytes"]
        print(f"memory {method:16s} today {today / 2**20:7.0f} MiB  spectrum "
              f"{spectrum / 2**20:7.0f} MiB  → {spectrum / today:.2f}×")  # fmt: skip


if __name__ == "__main__":
    main()
