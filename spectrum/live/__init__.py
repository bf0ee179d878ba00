"""Live re-merge: change λ or the method of a loaded model in place.

``LiveMerger`` (transformers) and ``VllmLiveMerger`` (``spectrum.live.vllm``, needs the
``vllm`` package) share one surface: ``load(...)``, ``set(method, lam, ...)`` →
``LoadedMerge``, ``current``, ``memory`` and ``with merger.session() as merge:``.
"""

from spectrum.live.core import LoadedMerge
from spectrum.live.hf import LiveMerger
from spectrum.live.memory import MemoryPlan

__all__ = ["LiveMerger", "LoadedMerge", "MemoryPlan"]
