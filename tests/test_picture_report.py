"""`spectrum report` as a page to read: a table of contents whose links all land, a
best-configurations table whose numbers an independent DuckDB query gives, one small plot
per method (its points the method's own), findings as a compact table, heatmaps that say
where the other module kinds sit, and no monospace wall before the first plot."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import datetime
from html.parser import HTMLParser

import duckdb
import numpy as np
import pandas as pd
import pytest

from spectrum.cli import main
from spectrum.eval import store

LAMS = (0.0, 0.25, 0.5, 0.75, 1.0)
PROBLEMS = ("p1", "p2", "p3", "p4")


def _correct(*key) -> bool:
    """A fixed but irregular outcome per (config, problem, sample)."""
    return hashlib.sha256(repr(key).encode()).digest()[0] % 3 != 0


def _rows(method: str, lam: float, *, module_lams=None, params=None) -> list[dict]:
    config = f"{method}-{lam}-{module_lams}-{params}"
    rows = []
    for index, problem in enumerate(PROBLEMS):
        for sample in (0, 1):
            thinks = lam > 0.4
            rows.append(
                dict(
                    config_id=config, run_id="r1", method=method, lam=lam,
                    module_lams=None if module_lams is None else json.dumps(module_lams),
                    params=None if params is None else json.dumps(params),
                    benchmark="synthetic", level=1 + index % 2, problem_id=problem,
                    sample_idx=sample, do_sample=False, max_new_tokens=64,
                    prompt=f"question {problem}", response="\\boxed{1}",
                    n_tokens=5 + int(40 * lam) + 3 * index + sample, finished=True,
                    thinks=thinks, extracted="1", gold="1",
                    correct=_correct(config, problem, sample),
                    latency_s=0.1, created_at=datetime(2026, 1, 1),
                )
            )  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("picture_report")
    db = folder / "results.duckdb"
    rows = [r for m in ("linear", "ties") for lam in LAMS for r in _rows(m, lam)]
    grid = [{"attn": a, "mlp": m} for a in (0.0, 1.0) for m in (0.0, 0.5, 1.0)]
    rows += [r for lams in grid for r in _rows("linear", 0.5, module_lams=lams)]
    rows += [r for b in (8, 16) for r in _rows("budget_forcing", 1.0, params={"budget": b})]
    con = store.connect(db)
    store.insert_frame(con, "samples", pd.DataFrame(rows))
    con.close()
    out = folder / "report.html"
    assert main(["report", "--db", str(db), "--out", str(out)]) == 0
    return db, out.read_text()


class Page(HTMLParser):
    """Ids, links, tables (rows of cell texts) and the text outside <details> before the
    first plot, of one HTML page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.links: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None
        self._depth = {"details": 0, "script": 0, "style": 0}
        self.before_plot: list[str] = []
        self.seen_plot = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])
        if tag in self._depth:
            self._depth[tag] += 1
        if "plotly-graph-div" in (attrs.get("class") or ""):
            self.seen_plot = True
        if tag == "table" and self._table is None:
            self._table = []
            self._name = attrs.get("class", "")
        elif tag == "tr" and self._table is not None and not self._depth["details"]:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None and not self._depth["details"]:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in self._depth:
            self._depth[tag] -= 1
        if tag in ("td", "th") and self._cell is not None and not self._depth["details"]:
            self._table[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table" and self._table is not None and not self._depth["details"]:
            self.tables.setdefault(self._name, self._table)
            self._table = None

    def handle_data(self, data):
        if self._cell is not None and not self._depth["details"]:
            self._cell.append(data)
        visible = not any(self._depth.values())
        if visible and not self.seen_plot and data.strip():
            self.before_plot.append(data.strip())


def per_config(db) -> pd.DataFrame:
    """Mean@k and Token#N per configuration straight from SQL: per problem, then over
    problems (every problem weighs the same)."""
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(
            "SELECT config_id, any_value(method) AS method, any_value(lam) AS lam, "
            "any_value(module_lams) AS module_lams, avg(acc) AS acc, avg(tok) AS tok FROM "
            "(SELECT config_id, method, lam, module_lams, problem_id, avg(correct::INTEGER) AS acc,"
            " avg(n_tokens) AS tok FROM samples GROUP BY ALL) GROUP BY config_id"
        ).df()


def test_every_contents_link_lands_on_a_section(report):
    _, text = report
    page = Page(text)
    toc = re.search(r'<nav id="toc">(.*?)</nav>', text, re.S).group(1)
    targets = re.findall(r'href="#([^"]+)"', toc)
    assert {"best", "findings", "bench-synthetic", "levels"} <= set(targets)
    for method in ("linear", "ties", "budget_forcing"):
        assert f"synthetic-method-{method}" in targets
    assert all(page.ids.count(target) == 1 for target in targets), targets
    # Nothing monospace, and little text, before the first plot.
    assert "<pre" not in text
    assert len(" ".join(page.before_plot).split()) < 400


def test_best_configurations_are_what_the_database_says(report):
    db, text = report
    header, *rows = Page(text).tables["best"]
    assert header[:4] == ["benchmark", "decoding", "method", "configuration"]
    shown = {row[2]: row for row in rows}
    configs = per_config(db)
    assert set(shown) == set(configs["method"])
    for method, group in configs.groupby("method"):
        best = group.sort_values(["acc", "tok", "lam"], ascending=[False, True, True]).iloc[0]
        row = shown[method]
        assert row[1] == "greedy, ≤ 64 tokens"
        assert float(row[4].split()[0]) == pytest.approx(best["acc"], abs=5e-4)
        assert float(row[5]) == pytest.approx(best["tok"], abs=0.05)
        assert f"λ={best['lam']:g}" in row[3]
        if isinstance(best["module_lams"], str):  # a λ-per-module point names its λs
            for kind, lam in json.loads(best["module_lams"]).items():
                assert f"λ_{kind}={lam:g}" in row[3]


def numbers(values) -> list[float]:
    """Plot data as numbers: plotly ships numpy arrays as {"dtype", "bdata": base64}."""
    if isinstance(values, dict):
        return np.frombuffer(base64.b64decode(values["bdata"]), values["dtype"]).tolist()
    return [float(value) for value in values]


def plot_data(text: str, div_id: str) -> list[dict]:
    match = re.search(rf'Plotly\.newPlot\(\s*"{div_id}",\s*(\[.*?\]),\s*\{{', text, re.S)
    assert match, div_id
    return json.loads(match.group(1))


def test_one_small_plot_per_method_with_its_own_points(report):
    db, text = report
    configs = per_config(db)
    plain = configs[configs["module_lams"].isna()]
    for method in ("linear", "ties"):
        assert text.count(f'id="plot-synthetic-method-{method}"') == 1
        traces = plot_data(text, f"plot-synthetic-method-{method}")
        accuracy = next(t for t in traces if t.get("name") == "accuracy")
        expected = plain[plain["method"] == method].sort_values("lam")
        assert numbers(accuracy["x"]) == list(expected["lam"])
        assert numbers(accuracy["y"]) == pytest.approx(list(expected["acc"]))
        # Only this method's points: no other method's curve in its plot.
        names = {t.get("name") for t in traces}
        assert names == {"accuracy", "accuracy 90% CI", "Think#R", "Token#N"}
    # A baseline's plot runs along its tokens (its budgets), not λ.
    traces = plot_data(text, "plot-synthetic-method-budget_forcing")
    accuracy = next(t for t in traces if t.get("name") == "accuracy")
    budgets = configs[configs["method"] == "budget_forcing"].sort_values("tok")
    assert numbers(accuracy["x"]) == pytest.approx(list(budgets["tok"]))
    assert numbers(accuracy["y"]) == pytest.approx(list(budgets["acc"]))


def test_findings_are_a_compact_table_and_heatmaps_say_the_other_kinds(report):
    _, text = report
    findings = Page(text).tables["findings"]
    titles = [row[0] for row in findings]
    assert titles[:3] == ["Parents", "Phase change (Think#R crosses ½)", "Three stages"]
    assert "Merges vs baselines" in titles and titles[-1] == "Every statement"
    assert len(findings) <= 10  # one row per kind; each statement behind <details>
    section = re.search(r'<section id="findings">(.*?)</section>', text, re.S).group(1)
    assert section.count("<details>") == len(findings)
    assert "synthetic: direct parent (linear λ=0) accuracy" in section  # the full text, folded
    # The heatmap's caption names the kinds it does not plot and their λ.
    assert "λ_attn × λ_mlp; other kinds: embed, norm, lm_head at λ=0.5" in text
