"""Linked views: the chat's merge as a link, a command line and a merge file, and as a
marker on every explorer plot; an explorer point as a merge for the chat.

Pure functions of a ``MergeSpec`` (and of the explorer's tables and figures); the
``Dashboard`` wraps the ones that need the loaded pair. The command line and the YAML are
what ``spectrum merge`` and ``spectrum merge --config`` parse back to the same spec.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

import pandas as pd
import plotly.graph_objects as go
import yaml

from spectrum.errors import UserError
from spectrum.merge.scope import MODULE_KINDS
from spectrum.merge.spec import MergeSpec
from spectrum.methods import resolve_params

PARAM_PREFIX = "param."  # a method parameter in a link: ?param.density=0.8
PROMPT_CHARS = 20_000  # a link's prompt longer than this is refused (URLs stay sane)
POINT_KEYS = ("method", "lam", "params", "module_lams", "layers", "modules")
DEFAULT_SPEC = MergeSpec()  # what a page opens on (linear at λ 0.5)
MARKER_COLOR = "#e11d48"
MARKER = dict(symbol="star", size=22, color=MARKER_COLOR, line=dict(width=1.5, color="white"))


def chat_label(spec: MergeSpec) -> str:
    """How a plot names the chat's merge: ``chat: linear@0.7`` (+ module λs)."""
    text = f"chat: {spec.method}@{spec.lam:g}"
    if spec.module_lams:
        text += " " + " ".join(f"{kind}={lam:g}" for kind, lam in spec.module_lams)
    return text


# --- links -------------------------------------------------------------------------------


def share_query(spec: MergeSpec, prompt: str = "") -> str:
    """``?method=linear&lam=0.7&attn=0.8&prompt=…``: method and λ always, the rest only
    where it differs from a default merge, so a plain link stays short."""
    pairs: list[tuple[str, str]] = [("method", spec.method), ("lam", repr(spec.lam))]
    pairs += [(kind, repr(lam)) for kind, lam in spec.module_lams or ()]
    if spec.layers:
        pairs.append(("layers", spec.layers))
    if spec.modules:
        pairs.append(("modules", ",".join(spec.modules)))
    if spec.seed:
        pairs.append(("seed", str(spec.seed)))
    defaults = resolve_params(spec.method)
    changed = [(name, value) for name, value in spec.params if defaults.get(name) != value]
    pairs += [(PARAM_PREFIX + name, _text(value)) for name, value in changed]
    if prompt:
        pairs.append(("prompt", prompt))
    return "?" + urlencode(pairs)


@dataclass(frozen=True)
class SharedState:
    """What a link sets: the merge, the prompt, and what it asked for that was refused."""

    spec: MergeSpec
    prompt: str = ""
    problems: tuple[str, ...] = ()

    def warning(self) -> str | None:
        """One line naming every refused value, or None when the link was whole."""
        if not self.problems:
            return None
        return "This link's " + "; ".join(self.problems) + " — using the defaults for those."


def read_query(
    query: Mapping[str, str],
    check: Callable[[MergeSpec], MergeSpec],
    methods: Sequence[str],
    default: MergeSpec = DEFAULT_SPEC,
) -> SharedState:
    """The state a link names, each value checked on its own (``check`` is the loaded
    pair's rule): a bad one is left at its default and named in ``problems``."""
    problems: list[str] = []
    spec = default
    method = query.get("method")
    if method is not None and method not in methods:
        problems.append(f"method {method!r} is not one of {', '.join(methods)}")
    elif method is not None:
        spec = replace(default, method=method, params=())

    def attempt(key: str, change: Callable[[], dict[str, Any]]) -> None:
        nonlocal spec
        try:
            candidate = replace(spec, **change())
            check(candidate)
        except UserError as error:
            problems.append(f"{key}={query[key]!r} ({error})")
        else:
            spec = candidate

    if "lam" in query:
        attempt("lam", lambda: dict(lam=_number(query["lam"], "λ")))
    for kind in (kind for kind in MODULE_KINDS if kind in query):
        own = dict(spec.module_lams or ())
        attempt(kind, lambda k=kind, o=own: dict(module_lams={**o, k: _number(query[k], k)}))
    if "layers" in query:
        attempt("layers", lambda: dict(layers=query["layers"].strip() or None))
    if "modules" in query:
        attempt("modules", lambda: dict(modules=query["modules"]))
    if "seed" in query:
        attempt("seed", lambda: dict(seed=_whole(query["seed"])))
    for key in (key for key in query if key.startswith(PARAM_PREFIX)):
        given = {**dict(spec.params), key[len(PARAM_PREFIX) :]: query[key]}
        attempt(key, lambda given=given: dict(params=given))
    prompt = query.get("prompt", "")
    if len(prompt) > PROMPT_CHARS:
        problems.append(f"prompt has {len(prompt):,} characters, more than {PROMPT_CHARS:,}")
        prompt = ""
    known = {"method", "lam", "layers", "modules", "seed", "prompt", *MODULE_KINDS}
    for key in query:
        if key not in known and not key.startswith((PARAM_PREFIX, "_")):
            problems.append(f"{key!r} is not a link setting")
    return SharedState(check(spec), prompt, tuple(problems))


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{what} must be a number") from None


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UserError("a seed is a whole number") from None


# --- command line and merge file ---------------------------------------------------------


def _text(value: Any) -> str:
    """A parameter value as a flag or link writes it (floats exactly: repr round-trips)."""
    return repr(value) if isinstance(value, float) else str(value)


def lam_text(spec: MergeSpec) -> str:
    """``--lam`` as ``spectrum merge`` reads it: ``0.5`` or ``0.5,attn=0.8,mlp=0.3``."""
    parts = [repr(spec.lam)] + [f"{kind}={lam!r}" for kind, lam in spec.module_lams or ()]
    return ",".join(parts)


def merge_command(spec: MergeSpec, sources: Mapping[str, str | None], out: str) -> str:
    """The ``spectrum merge`` command line that writes ``spec`` of the pair ``sources``
    (direct, thinking, base) into ``out``."""
    words = ["spectrum", "merge", "--direct", sources["direct"], "--thinking", sources["thinking"]]
    if sources.get("base"):
        words += ["--base", sources["base"]]
    words += ["--method", spec.method, "--lam", lam_text(spec)]
    for name, value in spec.params:
        words += ["--param", f"{name}={_text(value)}"]
    if spec.lam_schedule:
        words += ["--lam-schedule", ",".join(repr(v) for v in spec.lam_schedule)]
    if spec.layers:
        words += ["--layers", spec.layers]
    if spec.modules:
        words += ["--modules", ",".join(spec.modules)]
    if spec.seed:
        words += ["--seed", str(spec.seed)]
    words += ["--out", out]
    return shlex.join(words)


def merge_yaml(spec: MergeSpec, sources: Mapping[str, str | None]) -> str:
    """The merge file ``spectrum merge --config`` reads (``MergeConfig``'s flat keys)."""
    data: dict[str, Any] = {"direct": sources["direct"], "thinking": sources["thinking"]}
    if sources.get("base"):
        data["base"] = sources["base"]
    written = spec.to_json()
    data.update({key: value for key, value in written.items() if value not in (None, {})})
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


# --- explorer points ---------------------------------------------------------------------


def spec_from_point(text: str, methods: Sequence[str]) -> MergeSpec:
    """The merge an explorer point stands for (``figures.configuration``'s JSON)."""
    try:
        data = json.loads(text)
    except (TypeError, ValueError):
        raise UserError("that point carries no merge") from None
    if not isinstance(data, dict) or "method" not in data or "lam" not in data:
        raise UserError("that point carries no merge")
    unknown = sorted(set(data) - set(POINT_KEYS))
    if unknown:
        raise UserError(f"that point names {unknown[0]!r}, which is not part of a merge")
    if data["method"] not in methods:
        raise UserError(f"this page cannot run {data['method']!r} (it needs a base model)")
    return MergeSpec(**data)


# --- markers -----------------------------------------------------------------------------


def nearest_row(rows: pd.DataFrame, spec: MergeSpec) -> pd.Series | None:
    """The stored row of ``spec``'s method closest to it: the same kind of merge (plain, or
    λ per module kind), the nearest λ(s). None when the method has no such row."""
    rows = rows[rows["method"] == spec.method]
    if "module_lams" in rows:
        per_kind = rows["module_lams"].notna()
        rows = rows[per_kind] if spec.module_lams else rows[~per_kind]
    if rows.empty:
        return None
    distance = rows.apply(lambda row: _distance(row, spec), axis=1)
    return rows.loc[distance.idxmin()]


def _distance(row: pd.Series, spec: MergeSpec) -> float:
    stored = json.loads(row["module_lams"]) if isinstance(row.get("module_lams"), str) else {}
    mine = dict(spec.module_lams or ())
    gaps = [abs(float(row["lam"]) - spec.lam)]
    gaps += [abs(stored.get(kind, row["lam"]) - mine.get(kind, spec.lam)) for kind in MODULE_KINDS]
    return max(gaps)


def mark_lam_axis(figure: go.Figure, spec: MergeSpec) -> go.Figure:
    """A vertical line at the chat's λ on a plot over λ."""
    figure.add_vline(
        x=spec.lam,
        line=dict(color=MARKER_COLOR, width=2, dash="dash"),
        annotation=dict(text=chat_label(spec), font=dict(color=MARKER_COLOR)),
        annotation_position="top",
    )
    return figure


def mark_rows(figure: go.Figure, rows: Sequence[pd.Series], spec: MergeSpec) -> go.Figure:
    """Stars on the stored configurations nearest the chat's merge (on an accuracy vs
    tokens plot, one per curve), labelled; a note in the corner when there are none."""
    if not rows:
        return _note(figure, f"{chat_label(spec)} (no stored {spec.method} point like it)")
    label = chat_label(spec)
    if len(rows) > 1:  # one label in the corner, not one per star
        _note(figure, label)
    figure.add_trace(
        go.Scatter(
            x=[row["tokens"] for row in rows],
            y=[row["mean"] for row in rows],
            mode="markers+text",
            marker=MARKER,
            text=[label] if len(rows) == 1 else None,
            textposition="bottom center",
            textfont=dict(color=MARKER_COLOR),
            name=label,
            showlegend=False,  # a legend entry would crowd out the methods'
            hovertext=[f"{label}: nearest stored λ={row['lam']:g}" for row in rows],
            hoverinfo="text",
        )
    )
    return figure


def mark_heatmap(figure: go.Figure, spec: MergeSpec, kinds: tuple[str, str]) -> go.Figure:
    """A star at the chat's (λ of ``kinds[1]``, λ of ``kinds[0]``) on a module heatmap."""
    own = dict(spec.module_lams or ())
    y, x = (own.get(kind, spec.lam) for kind in kinds)
    figure.add_trace(
        go.Scatter(
            x=[x], y=[y], mode="markers", marker=MARKER, name=chat_label(spec), showlegend=False,
            hovertext=[chat_label(spec)], hoverinfo="text",
        )
    )  # fmt: skip
    return figure


def _note(figure: go.Figure, text: str) -> go.Figure:
    figure.add_annotation(
        text=text, xref="paper", yref="paper", x=1, y=1.02, xanchor="right", yanchor="bottom",
        showarrow=False, font=dict(color=MARKER_COLOR),
    )  # fmt: skip
    return figure
