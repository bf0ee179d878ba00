"""Merging: ``MergeSpec`` (which merge), the streaming engine (tensors in, merged tensors
out) and the folder job (checkpoints in, a merged checkpoint folder out)."""

from spectrum.merge.engine import merge_tensors
from spectrum.merge.folder import MergeConfig, merge_checkpoints
from spectrum.merge.spec import MergeSpec, check_lam

__all__ = ["MergeConfig", "MergeSpec", "check_lam", "merge_checkpoints", "merge_tensors"]
