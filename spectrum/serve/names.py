"""Which merge a request names: ``direct``, ``thinking``, ``METHOD@LAM`` (``linear@0.7``,
``slerp@0.6``), λ per module kind (``linear@0.5,attn=0.8``), a bare ``METHOD`` (λ from the
request), plus the body fields ``lam`` and ``reasoning_effort``.

No torch here: the CLI's ``--help`` and the tests import it freely.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from spectrum.errors import UserError
from spectrum.merge.spec import MergeSpec, parse_lam_text
from spectrum.methods import REGISTRY

EFFORTS = ("low", "medium", "high")
# λ of each effort when no results DB is given: the embedded pair's phase change sits near
# 0.5 (docs/SERVE.md), so low stays direct-like, medium is past it, high is the thinker.
DEFAULT_EFFORT_LAMS = {"low": 0.3, "medium": 0.6, "high": 1.0}
# With --db: an effort's target is this fraction of the way from the direct model's
# accuracy to the best accuracy the sweep reached.
EFFORT_TARGETS = {"low": 0.25, "medium": 0.6, "high": 1.0}
ENDPOINTS = {"direct": 0.0, "thinking": 1.0}


class UnknownModel(UserError):
    """A model name that names no merge (answered 404, as OpenAI answers an unknown model)."""


def parse_model(name: Any, default_lam: float) -> MergeSpec:
    """``direct`` / ``thinking`` / ``METHOD`` (at ``default_lam``) / ``METHOD@LAM[,KIND=λ...]``
    → the spec it names."""
    if not isinstance(name, str) or not name.strip():
        raise UserError("model must be a name such as direct, thinking or linear@0.5")
    name = name.strip()
    if name in ENDPOINTS:
        return MergeSpec("linear", ENDPOINTS[name])
    method, at, lam_text = name.partition("@")
    if method not in REGISTRY:
        known = ", ".join(["direct", "thinking", *(f"{m}@LAM" for m in REGISTRY)])
        raise UnknownModel(f"model {name!r} does not exist; use one of {known}")
    if not at:
        return MergeSpec(method, default_lam)
    lam, module_lams = parse_lam_text(lam_text)
    return MergeSpec(method, lam, module_lams=module_lams)


def model_name(spec: MergeSpec) -> str:
    """The name that asks for ``spec`` again (its method, λ and module λs)."""
    if spec.method == "linear" and spec.module_lams is None and spec.lam in (0.0, 1.0):
        if spec.scope.describe() == MergeSpec().scope.describe():
            return "direct" if spec.lam == 0.0 else "thinking"
    kinds = "".join(f",{kind}={lam:g}" for kind, lam in spec.module_lams or ())
    return f"{spec.method}@{spec.lam:g}{kinds}"


def request_spec(model: Any, lam: Any, effort: Any, effort_lams: dict[str, float]) -> MergeSpec:
    """The merge a request asks for: the name's, λ overridden by ``lam`` or by
    ``reasoning_effort`` (mapped through ``effort_lams``); giving both is refused. A bare
    method name runs at the medium effort's λ."""
    spec = parse_model(model, effort_lams["medium"])
    if lam is not None and effort is not None:
        raise UserError("give lam or reasoning_effort, not both: each sets λ")
    if lam is not None:
        if isinstance(lam, bool) or not isinstance(lam, int | float) or not math.isfinite(lam):
            raise UserError(f"lam must be a number in [0, 1], not {lam!r}")
        return replace(spec, lam=float(lam))
    if effort is not None:
        if effort not in EFFORTS:
            raise UserError(f"reasoning_effort must be one of {', '.join(EFFORTS)}, not {effort!r}")
        return replace(spec, lam=effort_lams[effort])
    return spec


def effort_lams_from_db(db: str | Path, benchmark: str | None = None) -> dict[str, float]:
    """Each effort's λ from a results DB's plain ``linear`` sweep: the smallest λ whose
    accuracy reaches the effort's target and stays there at every larger λ of the grid
    (confirmed: one lucky λ below the rise does not count)."""
    import duckdb  # heavy for --help; here only when --db is given

    from spectrum.eval.results import summaries

    path = Path(db)
    if not path.is_file():
        raise UserError(f"results DB {path} does not exist", cli_hint="pass --db PATH")
    with duckdb.connect(str(path), read_only=True) as con:
        table = summaries(con, methods=["linear"])
    table = table[table["module_lams"].isna()]
    benchmarks = sorted(table["benchmark"].unique())
    if not benchmarks:
        raise UserError(f"results DB {path} holds no linear sweep to map reasoning_effort from")
    bench = benchmark or benchmarks[0]
    rows = table[table["benchmark"] == bench].sort_values("lam")
    if rows.empty or rows["lam"].iloc[0] != 0.0:
        raise UserError(f"the linear sweep on {bench} in {path} has no λ = 0 to start from")
    return {
        effort: smallest_reaching(rows["lam"].tolist(), rows["mean"].tolist(), fraction)
        for effort, fraction in EFFORT_TARGETS.items()
    }


def smallest_reaching(lams: list[float], accuracy: list[float], fraction: float) -> float:
    """The smallest λ (sorted ``lams``, ``lams[0] = 0``) from which every accuracy is at
    least ``fraction`` of the way from accuracy at λ = 0 to the best accuracy."""
    target = accuracy[0] + fraction * (max(accuracy) - accuracy[0])
    found = lams[-1]
    for lam, value in zip(reversed(lams), reversed(accuracy), strict=True):
        if value < target - 1e-12:
            break
        found = lam
    return float(found)
