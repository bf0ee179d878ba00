"""The dashboard service: everything the page does, without Gradio. ``ui/`` imports this
package (and ``spectrum.errors``) and nothing else of the library."""

from spectrum.dashboard.explorer import ALL_RUNS, sample_cards
from spectrum.dashboard.service import (
    DEFAULT_DB,
    DEFAULT_PAIR,
    PAGE_SWEEP_LIMITS,
    REPO,
    SAMPLING_MODES,
    ChatLimits,
    Dashboard,
    ExportQuota,
    Reply,
    Turn,
    blind_order,
    decoding_for,
    example_prompts,
    pair_sources,
)
from spectrum.dashboard.votes import COLUMNS
from spectrum.devices import return_freed_memory_to_os
from spectrum.eval.sweep import SweepLimits, SweepProgress, SweepResult
from spectrum.generate.chat import math_markdown
from spectrum.merge.scope import MODULE_KINDS
from spectrum.merge.spec import MergeSpec
from spectrum.methods import Param

__all__ = [
    "ALL_RUNS",
    "COLUMNS",
    "DEFAULT_DB",
    "DEFAULT_PAIR",
    "MODULE_KINDS",
    "PAGE_SWEEP_LIMITS",
    "REPO",
    "SAMPLING_MODES",
    "ChatLimits",
    "Dashboard",
    "ExportQuota",
    "MergeSpec",
    "Param",
    "Reply",
    "SweepLimits",
    "SweepProgress",
    "SweepResult",
    "Turn",
    "blind_order",
    "decoding_for",
    "example_prompts",
    "math_markdown",
    "pair_sources",
    "return_freed_memory_to_os",
    "sample_cards",
]
