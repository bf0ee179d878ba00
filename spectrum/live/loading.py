"""Build a checkpoint's model on its device, filled one tensor at a time.

``from_pretrained`` hands every tensor of the checkpoint to a pool of reader threads up
front and converts them as they arrive; for Qwen3-MoE it then stacks 128 per-expert
tensors and concatenates gate and up into each fused ``gate_up_proj``. The readers run
ahead of the conversion, so the peak at load is the model plus however much has been read
ahead plus each fused parameter's pieces, stack and concatenation (a Qwen3-30B-A3B-shaped
pair cut to 2 layers: 10.7 GiB RSS for a 3.5 GiB model, bench/real_scale.py). A peak that
depends on thread timing cannot be planned.

``load_model`` instead builds the model from its config straight on the target device
with uninitialised weights, then writes each checkpoint tensor through the view of the
parameter that holds it (``spectrum.live.views``: the same mapping every ``set()`` writes
through). The peak is the model plus the one tensor in hand, on the host and on the
device alike. Should the views not cover every parameter (a model whose remote code
loads in ways the views cannot follow), it falls back to ``from_pretrained``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, PreTrainedModel
from transformers.initialization import no_init_weights

from spectrum.live.views import checkpoint_tensors, checkpoint_views
from spectrum.weights.checkpoint import Checkpoint, open_checkpoint, refuse_quantized

log = logging.getLogger(__name__)


def load_model(
    checkpoint: Checkpoint | str | Path,
    device: torch.device,
    dtype: torch.dtype | None = None,
    *,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> PreTrainedModel:
    """The checkpoint's causal LM on ``device`` in eval mode; ``dtype`` None: as
    ``from_pretrained(dtype="auto")`` picks it (the config's dtype, else the weights')."""
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = open_checkpoint(checkpoint, allow_pickle=allow_pickle)
    refuse_quantized(checkpoint, "the live model loader")
    remote = dict(trust_remote_code=trust_remote_code)
    config = AutoConfig.from_pretrained(checkpoint.path, **remote)
    dtype = dtype or _auto_dtype(config, checkpoint)
    with no_init_weights(), torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, **remote)
    model.tie_weights()  # from_pretrained ties after loading; the views must see the tie
    views = checkpoint_views(model)
    if not (_covers(model, views, checkpoint) and _fill(model, views, checkpoint)):
        log.info("%s: loading through from_pretrained (views do not cover it)", checkpoint.path)
        del model, views
        on_device = dict(device_map=str(device)) if device.type == "cuda" else {}
        model = AutoModelForCausalLM.from_pretrained(
            checkpoint.path, dtype=dtype, **on_device, **remote
        )
        return model.to(device).eval()
    model.generation_config = _generation_config(checkpoint.path, config)
    return model.eval()


@torch.no_grad()
def _fill(model: PreTrainedModel, views: dict, checkpoint: Checkpoint) -> bool:
    """Write every checkpoint tensor; False if a tied duplicate differs from its partner
    (transformers then unties the two, which a tied model cannot follow)."""
    duplicates = [name for name in checkpoint.names() if name not in views]
    for name in checkpoint.names():
        if name in views:
            views[name].copy_(checkpoint.get(name))
    state = model.state_dict()
    return all(torch.equal(state[n], checkpoint.get(n).to(state[n])) for n in duplicates)


def _auto_dtype(config, checkpoint: Checkpoint) -> torch.dtype:
    configured = getattr(config, "dtype", None)
    if isinstance(configured, str):
        configured = getattr(torch, configured, None)
    if isinstance(configured, torch.dtype):
        return configured
    floats = (checkpoint.dtype(n) for n in checkpoint.names())
    return next((d for d in floats if d.is_floating_point), torch.float32)


def _covers(model: PreTrainedModel, views: dict, checkpoint: Checkpoint) -> bool:
    """Whether writing the checkpoint's tensors through ``views`` sets every weight.

    Every viewed name must be in the checkpoint with its shape, the views must add up to
    every element of the parameters and persistent buffers, and checkpoint names without
    a view must be tied duplicates (names in the model's state dict whose parameter
    another name already covers).
    """
    names = set(checkpoint.names())
    for name, view in views.items():
        if name not in names or tuple(view.shape) != checkpoint.shape(name):
            return False
    covered = sum(view.numel() for view in views.values())
    if covered != sum(t.numel() for t in checkpoint_tensors(model).values()):  # tied once
        return False
    state = model.state_dict()
    return all(name in state for name in names - set(views))


def _generation_config(path: Path, config) -> GenerationConfig:
    """What ``from_pretrained`` attaches: the checkpoint's generation_config.json if any."""
    if (Path(path) / "generation_config.json").is_file():
        return GenerationConfig.from_pretrained(path)
    return GenerationConfig.from_model_config(config)
