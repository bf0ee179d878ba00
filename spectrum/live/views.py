"""Where each checkpoint tensor lives inside a loaded transformers model.

Merges are defined per *checkpoint* tensor (slerp angles, per-tensor Top-K, SVDs), but
transformers 5 may rename or fuse tensors on load: Qwen3-MoE's per-expert ``gate_proj`` /
``up_proj`` / ``down_proj`` become one ``mlp.experts.gate_up_proj`` / ``down_proj`` per
layer. Rather than re-implement those rules, we ask transformers' own reverse conversion
(the one ``save_pretrained`` uses) where each checkpoint tensor comes from, by running it
on integer position probes, and turn the answer into a strided *view* of the parameter.
Writing a merged checkpoint tensor into its view then updates the model in place, and the
offline merge's per-tensor semantics are kept exactly.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn
from transformers.core_model_loading import revert_weight_conversion

# Views per model, while its parameters keep their storage: the loader, the live merger
# and the spectrum model all ask, and a MoE model's probes cost seconds and gigabytes.
_KNOWN: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, ...], dict[str, Tensor]]] = (
    weakref.WeakKeyDictionary()
)


def checkpoint_views(model: nn.Module) -> dict[str, Tensor]:
    """Checkpoint tensor name → a view into the model's parameter storage holding it.

    Tied parameters appear once (``named_parameters`` drops duplicates), so a tied
    ``lm_head`` is updated through ``embed_tokens`` and stays tied. Persistent buffers
    are checkpoint tensors too (DeepSeek-V3's ``e_score_correction_bias``) and get views
    the same way.
    """
    storages = tuple(t.untyped_storage().data_ptr() for t in checkpoint_tensors(model).values())
    known = _KNOWN.get(model)
    if known is not None and known[0] == storages:
        return dict(known[1])
    views = _views(model)
    _KNOWN[model] = (storages, views)
    return dict(views)


def checkpoint_tensors(model: nn.Module) -> dict[str, Tensor]:
    """Model name → tensor for every parameter (tied ones once) and persistent buffer."""
    state = model.state_dict(keep_vars=True)
    tensors = {name: param.data for name, param in model.named_parameters()}
    tensors.update({name: buf for name, buf in model.named_buffers() if name in state})
    return tensors


def _views(model: nn.Module) -> dict[str, Tensor]:
    views: dict[str, Tensor] = {}
    for name, data in checkpoint_tensors(model).items():
        if not data.is_contiguous():
            raise ValueError(f"tensor {name} is not contiguous; cannot map it to views")
        for ckpt_name, view in _param_views(model, name, data).items():
            if ckpt_name in views:
                raise ValueError(f"checkpoint tensor {ckpt_name} spans several parameters")
            views[ckpt_name] = view
    return views


def _param_views(model: nn.Module, name: str, data: Tensor) -> dict[str, Tensor]:
    """Checkpoint name → view of ``data`` for the checkpoint tensors one parameter holds."""
    # Most reverse conversions (a rename, unbinding the experts) are view operations: run
    # on the parameter itself they return the views, allocating nothing. Probing positions
    # costs two int32 copies of the parameter (a 30B-A3B gate_up_proj: 3.2 GB), so it is
    # kept for conversions that copy (gate and up are chunked out of gate_up_proj and made
    # contiguous). Which kind it is, a meta-device run tells without touching memory.
    stand_in = torch.empty(data.shape, dtype=data.dtype, device="meta")
    if all(
        t is stand_in or t._base is stand_in
        for t in revert_weight_conversion(model, {name: stand_in}).values()
    ):
        return revert_weight_conversion(model, {name: data})
    # Positions, not values: the conversion only moves elements, so each output tells
    # which elements of the parameter it took.
    index = torch.int32 if data.numel() < 2**31 else torch.int64
    probe = torch.arange(data.numel(), dtype=index).view(data.shape)
    return {
        ckpt_name: _strided_view(data, positions, ckpt_name)
        for ckpt_name, positions in revert_weight_conversion(model, {name: probe}).items()
    }


def _strided_view(data: Tensor, positions: Tensor, ckpt_name: str) -> Tensor:
    """The view of ``data`` whose flat positions are ``positions``, or an error if none is."""
    if positions.numel() == 0:
        return data.view(-1)[:0].view(positions.shape)
    first = positions.reshape(-1)[0]
    strides = []
    for dim, size in enumerate(positions.shape):
        if size == 1:
            strides.append(1)
            continue
        step = positions.narrow(dim, 1, 1).reshape(-1)[0] - first
        strides.append(int(step))
    offset = int(first)
    # offset + Σ index·stride, built at the checkpoint tensor's own size: never a probe of
    # the whole parameter per checkpoint tensor (384 per MoE layer, 3.2 GB each).
    expected = torch.full((), offset, dtype=torch.int64)
    for dim, (size, stride) in enumerate(zip(positions.shape, strides, strict=True)):
        shape = [1] * positions.dim()
        shape[dim] = size
        expected = expected + torch.arange(size, dtype=torch.int64).view(shape) * stride
    if not torch.equal(expected, positions.to(torch.int64)):
        raise ValueError(f"checkpoint tensor {ckpt_name} is not a strided view of one parameter")
    return data.as_strided(positions.shape, strides, data.storage_offset() + offset)


def checkpoint_layout(model: nn.Module) -> tuple[set[str], int]:
    """What ``checkpoint_views`` would map, asked of a model on the meta device: the
    checkpoint names its tensors hold, and the elements of the largest tensor whose
    reverse conversion copies (the views probe it with two int32 copies). No memory is
    touched, so the planner can ask it of a 30B model from its config alone."""
    names: set[str] = set()
    probed = 0
    for name, data in checkpoint_tensors(model).items():
        stand_in = torch.empty(data.shape, dtype=data.dtype, device="meta")
        reverted = revert_weight_conversion(model, {name: stand_in})
        names.update(reverted)
        if not all(t is stand_in or t._base is stand_in for t in reverted.values()):
            probed = max(probed, data.numel())
    return names, probed
