"""Live re-merge into a loaded transformers model.

The model is loaded once from the direct parent; every checkpoint tensor is then written
through a view of the parameter that holds it (``spectrum.live.views``), so a ``set()``
allocates no model, keeps tied weights tied and never re-reads the parents from disk.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from transformers import PreTrainedModel

from spectrum.devices import resolve_device
from spectrum.errors import UserError
from spectrum.generate.template import load_tokenizer
from spectrum.live.core import LiveBackend
from spectrum.live.disk import read_parents
from spectrum.live.loading import load_model
from spectrum.live.memory import DEFAULT_CHUNK_BYTES, check_policy
from spectrum.live.prepared import ParentTensors, PreparedMerge
from spectrum.live.views import checkpoint_views
from spectrum.methods.linear import weighted_sum
from spectrum.weights.planner import check_live


class LiveMerger(LiveBackend):
    """A transformers model whose weights ``set()`` re-merges in place."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer,
        parents: ParentTensors,
        policy: str = "auto",
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ):
        super().__init__(parents, model.device, policy, chunk_bytes)
        self.model = model
        self.tokenizer = tokenizer
        self.views = checkpoint_views(model)
        missing = sorted(set(parents.merged_names()) - set(self.views))
        if missing:
            raise UserError(f"the loaded model has no parameter for checkpoint tensor {missing[0]}")

    @classmethod
    def load(
        cls,
        direct: str | Path,
        thinking: str | Path,
        base: str | Path | None = None,
        *,
        device: str | torch.device = "auto",
        dtype: torch.dtype | None = None,
        policy: str = "auto",
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        trust_remote_code: bool = False,
        allow_pickle: bool = False,
    ) -> LiveMerger:
        """Read the parents once and load the direct parent as the model to merge into.

        ``policy``: ``auto`` (resident when the prepared tensors fit the device, else
        streamed; ``disk`` when the parents do not fit in host memory), ``resident``,
        ``streamed`` or ``disk`` (see ``spectrum.live.memory``).
        ``trust_remote_code`` runs a hub repo's own model code: off unless asked for;
        ``allow_pickle`` reads pickle weight files (refused by name otherwise).
        """
        target = resolve_device(device)
        check_policy(policy)
        # Headers only: refuse in seconds, with numbers, a pair this machine cannot hold.
        policy = check_live(direct, thinking, base, device=str(target), policy=policy)
        parents = read_parents(direct, thinking, base, policy=policy, allow_pickle=allow_pickle)
        tokenizer = load_tokenizer(parents.direct_path, trust_remote_code=trust_remote_code)
        # Straight onto the device, one tensor at a time: never a whole model in host
        # memory on a GPU (the disk policy's host bound), no load transient on CPU.
        model = load_model(
            parents.direct_path, target, dtype,
            trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
        )  # fmt: skip
        return cls(model, tokenizer, parents, policy, chunk_bytes)

    @torch.no_grad()
    def _write(self, prepared: PreparedMerge, strength_for) -> None:
        prepared.write(
            strength_for, lambda name, merged: self.views[name].copy_(merged), self._in_place
        )
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _in_place(self, name: str) -> Tensor | None:
        """The parameter a method may write ``name``'s merge into directly (see ``Target``)."""
        view = self.views[name]
        return view if view.is_contiguous() and view.device == self.device else None

    def _linear_writer(self):
        # Runs inside _write's no_grad; a decorator here would cost more than the kernel.
        def write(name: str, direct: Tensor, thinking: Tensor, lam: float) -> None:
            view = self.views[name]
            if view.dtype == torch.float32:
                weighted_sum(direct, thinking, lam, out=view)  # in place, no temporary
            else:  # float32 math, rounded once to the model's dtype, as the offline merge
                view.copy_(weighted_sum(direct, thinking, lam))

        return write
