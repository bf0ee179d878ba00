"""The report's statements as one compact HTML table: a row per kind of finding with its
one-line gist, the details (a small table per kind, then every statement's full text)
collapsed under it. The explorer and ``spectrum report`` both show this."""

from __future__ import annotations

import html
from collections.abc import Sequence

# The order rows appear in, and what each kind is called.
KIND_TITLES = {
    "parent": "Parents",
    "phase_change": "Phase change (Think#R crosses ½)",
    "stages": "Three stages",
    "improvement_count": "Pareto improvements on a parent",
    "merge_vs_baseline": "Merges vs baselines",
    "confirmation": "Confirmations on fresh problems",
    "endpoints": "Endpoints (neither parent nor interpolation)",
}
CSS = """
table.findings { border-collapse: collapse; width: 100%; font-size: 0.92em; }
table.findings th, table.findings td { border-bottom: 1px solid #ddd; padding: 4px 8px;
  text-align: left; vertical-align: top; }
table.findings details table { border-collapse: collapse; margin: 4px 0; }
table.findings details td, table.findings details th { border: none; padding: 1px 8px 1px 0;
  font-size: 0.95em; }
"""


def _cell(text: object) -> str:
    return f"<td>{html.escape(str(text))}</td>"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _interval(numbers: dict, key: str, digits: int) -> str:
    value, low, high = (numbers.get(f"{key}{s}") for s in ("", "_low", "_high"))
    if value is None:
        return "—"
    return f"{value:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def _parents(found: list[dict]) -> tuple[str, str]:
    parts = [
        f"{s['role']} {s['benchmark']}: accuracy {s['numbers']['mean']:.3f}, "
        f"{s['numbers']['tokens']:.1f} tokens"
        for s in found
    ]
    rows = [
        (s["benchmark"], s["role"], f"{n['mean']:.3f} [{n['mean_low']:.3f}, {n['mean_high']:.3f}]",
         f"{n['tokens']:.1f}", f"{n['think']:.2f}", n["n_problems"], n["k"])
        for s in found
        for n in [s["numbers"]]
    ]  # fmt: skip
    header = ("benchmark", "parent", "accuracy (90 % CI)", "Token#N", "Think#R", "problems", "k")
    return "; ".join(parts), _table(header, rows)


def _phases(found: list[dict]) -> tuple[str, str]:
    lams = sorted(s["numbers"]["lam"] for s in found)
    gist = f"{len(found)} curves cross half-way between λ≈{lams[0]:.2f} and λ≈{lams[-1]:.2f}"
    rows = [
        (s["benchmark"], s["method"], f"{s['numbers']['lam']:.3f}",
         f"{s['numbers']['low']:g}–{s['numbers']['high']:g}")
        for s in found
    ]  # fmt: skip
    return gist, _table(("benchmark", "method", "half-way λ", "steepest step"), rows)


def _stages(found: list[dict]) -> tuple[str, str]:
    def span(numbers: dict, stage: int) -> str:
        found = numbers.get(f"stage{stage}")
        return "—" if found is None else f"{found[0]:g}–{found[1]:g}"

    reach = sum("stage3" in s["numbers"] for s in found)
    gist = f"{reach} of {len(found)} curves reach stage 3 (thinking on nearly every problem)"
    rows = [
        (s["benchmark"], s["method"], *(span(s["numbers"], stage) for stage in (1, 2, 3)))
        for s in found
    ]
    header = ("benchmark", "method", "stage 1 λ", "stage 2 λ", "stage 3 λ")
    return gist, _table(header, rows)


def _improvements(counts: list[dict], found: list[dict]) -> tuple[str, str]:
    held = sum(c["numbers"]["holding"] for c in counts)
    apparent = sum(c["numbers"]["apparent"] for c in counts)
    gist = f"{held} of {apparent} apparent improvements hold by the paired test"
    rows = [
        (s["benchmark"], s["configuration"], s["parent"], "holds" if s["holds"] else "not shown",
         _interval(s["numbers"], "acc_diff", 3), _interval(s["numbers"], "tokens_diff", 1))
        for s in found
    ]  # fmt: skip
    header = ("benchmark", "configuration", "vs parent", "paired test", "Δaccuracy", "Δtokens")
    return gist, _table(header, rows)


def _baselines(found: list[dict]) -> tuple[str, str]:
    beaten = sum(bool(s["holds"]) for s in found)
    gist = f"{beaten} of {len(found)} baselines beaten by a merge (paired test)"
    rows = [
        (s["benchmark"], s["baseline"], s.get("merge") or "none looks better",
         "beaten" if s["holds"] else "not beaten",
         _interval(s["numbers"], "acc_diff", 3), _interval(s["numbers"], "tokens_diff", 1))
        for s in found
    ]  # fmt: skip
    header = ("benchmark", "baseline", "best merge", "paired test", "Δaccuracy", "Δtokens")
    return gist, _table(header, rows)


def _confirmations(found: list[dict]) -> tuple[str, str]:
    held = sum(bool(s["holds"]) for s in found)
    gist = f"{held} of {len(found)} comparisons on fresh problems hold"
    rows = [
        (s["benchmark"], s["configuration"], s["parent"], "holds" if s["holds"] else "not shown")
        for s in found
    ]
    return gist, _table(("benchmark", "configuration", "vs parent", "paired test"), rows)


def _endpoints(found: list[dict]) -> tuple[str, str]:
    count = sum(s["numbers"]["count"] for s in found)
    named = "".join(f"<p>{html.escape(s['text'])}</p>" for s in found)
    return f"{count} configurations, kept out of merges and parents", named


def _row(title: str, gist: str, detail: str) -> str:
    summary = html.escape(gist)
    inner = f"<details><summary>{summary}</summary>{detail}</details>" if detail else summary
    return f"<tr><th>{html.escape(title)}</th><td>{inner}</td></tr>"


def findings_html(statements: Sequence[dict]) -> str:
    """``statements`` (``spectrum.eval.report.statements``) as a compact table: one row per
    kind with its gist and its details collapsed, then every statement's text collapsed."""
    if not statements:
        return '<p class="findings-empty">No findings: the database has no results here.</p>'
    by_kind: dict[str, list[dict]] = {}
    for statement in statements:
        by_kind.setdefault(statement["kind"], []).append(statement)
    rows = []
    if "parent" in by_kind:
        rows.append(_row(KIND_TITLES["parent"], *_parents(by_kind["parent"])))
    if "phase_change" in by_kind:
        rows.append(_row(KIND_TITLES["phase_change"], *_phases(by_kind["phase_change"])))
    if "stages" in by_kind:
        rows.append(_row(KIND_TITLES["stages"], *_stages(by_kind["stages"])))
    if "improvement_count" in by_kind:
        counts, found = by_kind["improvement_count"], by_kind.get("improvement", [])
        rows.append(_row(KIND_TITLES["improvement_count"], *_improvements(counts, found)))
    if "merge_vs_baseline" in by_kind:
        rows.append(
            _row(KIND_TITLES["merge_vs_baseline"], *_baselines(by_kind["merge_vs_baseline"]))
        )
    if "confirmation" in by_kind:
        rows.append(_row(KIND_TITLES["confirmation"], *_confirmations(by_kind["confirmation"])))
    if "endpoints" in by_kind:
        rows.append(_row(KIND_TITLES["endpoints"], *_endpoints(by_kind["endpoints"])))
    texts = "".join(f"<li>{html.escape(s['text'].strip())}</li>" for s in statements)
    every = (
        f"<tr><th>Every statement</th><td><details><summary>{len(statements)} statements "
        f"as text</summary><ul>{texts}</ul></details></td></tr>"
    )
    return f'<table class="findings">{"".join(rows)}{every}</table>'
