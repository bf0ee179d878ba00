"""Linked views without a browser: links ⇄ merges, the command line and YAML parsed back by
`spectrum merge`'s own parser, the merge each explorer point carries, and the chat marker
placed where an independent search of the stored rows says."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path
from urllib.parse import parse_qsl

import pandas as pd
import pytest

from spectrum.cli import build_parser
from spectrum.commands.merge import config_from_args
from spectrum.dashboard import Dashboard
from spectrum.dashboard.explorer import load_results
from spectrum.dashboard.linked import (
    PROMPT_CHARS,
    chat_label,
    merge_command,
    merge_yaml,
    read_query,
    share_query,
    spec_from_point,
)
from spectrum.errors import UserError
from spectrum.merge import MergeConfig, MergeSpec
from spectrum.methods import REGISTRY

REPO = Path(__file__).resolve().parents[1]
LAYERS = 4
METHODS = list(REGISTRY)


def check(spec: MergeSpec) -> MergeSpec:
    """The rule of a pair with a base and four layers (what a Dashboard's ``check`` is)."""
    return spec.checked(has_base=True, num_layers=LAYERS)


SPECS = [
    MergeSpec(),
    MergeSpec("slerp", 0.7),
    MergeSpec("linear", 0.1 + 0.2),  # 0.30000000000000004: exact digits must survive
    MergeSpec("linear", 0.5, module_lams={"attn": 0.8, "mlp": 0.3}),
    MergeSpec("ties", 0.35, {"density": 0.6, "tie_break": "plus"}, layers="1-2", seed=7),
    MergeSpec("twin", 0.9, {"variant": "svd"}, modules=("attn", "mlp")),
    MergeSpec("lore", 0.25, {"iterations": 3}, module_lams={"lm_head": 0.0}),
    *(MergeSpec(method, 0.6) for method in METHODS),
]


def query_of(link: str) -> dict[str, str]:
    assert link.startswith("?")
    return dict(parse_qsl(link[1:], keep_blank_values=True))


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.label())
def test_link_round_trips_the_merge_and_prompt(spec: MergeSpec):
    prompt = "What is 3 & 4? Say `λ = 0.5` #hash +plus ü"
    state = read_query(query_of(share_query(check(spec), prompt)), check, METHODS)
    assert state.problems == ()
    assert state.warning() is None
    assert state.spec == check(spec)
    assert state.prompt == prompt


def test_plain_link_is_short_and_readable():
    assert share_query(check(MergeSpec("slerp", 0.7))) == "?method=slerp&lam=0.7"
    ties = check(MergeSpec("ties", 0.4, {"density": 0.5}))  # tie_break stays at its default
    assert share_query(ties) == "?method=ties&lam=0.4&param.density=0.5"
    link = share_query(MergeSpec("linear", 0.5, module_lams={"attn": 0.8}), "2+2")
    assert link == "?method=linear&lam=0.5&attn=0.8&prompt=2%2B2"


def test_bad_link_values_fall_back_to_defaults_with_one_line():
    query = {
        "method": "slerp",
        "lam": "abc",
        "attn": "1.5",
        "mlp": "0.25",
        "layers": "3-9",
        "seed": "-1",
        "param.density": "0.5",  # slerp has no density
        "colour": "blue",
        "prompt": "x" * (PROMPT_CHARS + 1),
    }
    state = read_query(query, check, METHODS)
    # Every good value is kept; every bad one is left at its default.
    assert state.spec == check(MergeSpec("slerp", 0.5, module_lams={"mlp": 0.25}))
    assert state.prompt == ""
    line = state.warning()
    assert line is not None and "\n" not in line
    for named in ("lam='abc'", "attn='1.5'", "layers='3-9'", "seed='-1'", "param.density"):
        assert named in line, named
    assert "'colour' is not a link setting" in line and "prompt has" in line


def test_unknown_method_keeps_the_default_merge():
    state = read_query({"method": "nope", "lam": "0.2"}, check, ["linear", "slerp"])
    assert state.spec == check(MergeSpec("linear", 0.2))
    assert "method 'nope' is not one of linear, slerp" in state.warning()


def test_empty_link_is_the_default_page():
    state = read_query({}, check, METHODS)
    assert (state.spec, state.prompt, state.warning()) == (check(MergeSpec()), "", None)


SOURCES = {"direct": "models/my direct", "thinking": "models/think'ing", "base": "models/base"}


def parsed_command(line: str) -> MergeConfig:
    """``line`` as `spectrum merge` parses it: the real parser, then the real config."""
    words = shlex.split(line)
    assert words[:2] == ["spectrum", "merge"]
    args = build_parser({"merge": "spectrum.commands.merge"}).parse_args(words[1:])
    return config_from_args(args)


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.label())
def test_command_line_parses_back_to_the_same_merge(spec: MergeSpec):
    config = parsed_command(merge_command(check(spec), SOURCES, "out dir/merged"))
    assert config.checked().spec == check(spec)
    assert (config.direct, config.thinking, config.base) == tuple(SOURCES.values())


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.label())
def test_yaml_loads_back_to_the_same_merge(spec: MergeSpec, tmp_path: Path):
    path = tmp_path / "merge.yaml"
    path.write_text(merge_yaml(check(spec), SOURCES))
    config = MergeConfig.from_file(path)
    assert config.checked().spec == check(spec)
    assert (config.direct, config.thinking, config.base) == tuple(SOURCES.values())


def test_yaml_without_a_base_names_none(tmp_path: Path):
    text = merge_yaml(check(MergeSpec("slerp", 0.7)), {**SOURCES, "base": None})
    assert "base" not in text
    path = tmp_path / "merge.yaml"
    path.write_text(text)
    assert MergeConfig.from_file(path).base is None


@pytest.mark.parametrize(
    "text", ["", "not json", "[1, 2]", '{"lam": 0.5}', '{"method": "linear", "lam": 0.5, "x": 1}']
)
def test_point_without_a_merge_is_refused(text: str):
    with pytest.raises(UserError):
        spec_from_point(text, METHODS)


def test_point_of_a_method_the_page_cannot_run_is_refused():
    with pytest.raises(UserError, match="needs a base model"):
        spec_from_point('{"method": "ties", "lam": 0.5}', ["linear", "slerp"])


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    db = tmp_path_factory.mktemp("linked") / "results.duckdb"
    shutil.copyfile(REPO / "assets" / "spectrum.duckdb", db)
    return load_results(db)


def points(figure) -> list[tuple[float, float, str]]:
    """(x, y, merge JSON) of every point that carries a merge."""
    found = []
    for trace in figure.data:
        if trace.customdata is None or trace.type != "scatter":
            continue
        found += list(zip(trace.x, trace.y, trace.customdata, strict=True))
    return found


def test_every_point_carries_the_merge_it_plots(results):
    bench = results.benchmarks[0]
    table = results.table[results.table["benchmark"] == bench]
    methods = results.methods(bench)
    plots = results.figures(bench, methods)
    for metric in ("mean", "tokens", "think"):
        carried = points(plots[metric])
        assert carried
        for lam, value, merge in carried:
            spec = spec_from_point(merge, METHODS)
            assert spec.lam == lam and spec.module_lams is None
            row = table[(table["method"] == spec.method) & (table["lam"] == lam)]
            row = row[row["module_lams"].isna()]
            assert value in set(row[metric]), (spec, metric)
    carried = points(plots["pareto"])
    assert len(carried) >= len(table[table["kind"] != "baseline"]) - len(
        table[table["module_lams"].notna()]
    )
    for tokens, mean, merge in carried:
        spec = spec_from_point(merge, METHODS)
        row = table[(table["method"] == spec.method) & (table["lam"] == spec.lam)]
        assert ((row["tokens"] == tokens) & (row["mean"] == mean)).any(), spec


def test_heatmap_cells_carry_their_module_lams(results):
    bench = results.benchmarks[0]
    heat = results.heatmaps(bench)[0].data[0]
    seen = 0
    for y, row in zip(heat.y, heat.customdata, strict=True):
        for x, merge in zip(heat.x, row, strict=True):
            if merge:
                spec = spec_from_point(merge, METHODS)
                assert dict(spec.module_lams) == {"attn": y, "mlp": x}
                seen += 1
    assert seen >= 4


def nearest_by_hand(table: pd.DataFrame, spec: MergeSpec) -> pd.Series:
    """The plain stored row of the spec's method with the smallest |λ − λ_chat|."""
    rows = table[(table["method"] == spec.method) & table["module_lams"].isna()]
    best = min(rows.index, key=lambda i: abs(rows.loc[i, "lam"] - spec.lam))
    return rows.loc[best]


def marker(figure):
    stars = [t for t in figure.data if t.type == "scatter" and t.marker.symbol == "star"]
    return [t for t in stars if t.name and t.name.startswith("chat: ")]


@pytest.mark.parametrize("spec", [MergeSpec("linear", 0.62), MergeSpec("slerp", 0.07)])
def test_marker_sits_on_the_nearest_stored_merge(results, spec: MergeSpec):
    bench = results.benchmarks[0]
    table = results.table[results.table["benchmark"] == bench]
    plots = results.figures(bench, ["linear", "slerp"], chat=spec)
    (star,) = marker(plots["pareto"])
    expected = nearest_by_hand(table, spec)
    assert (star.x[0], star.y[0]) == (expected["tokens"], expected["mean"])
    assert star.name == chat_label(spec) == f"chat: {spec.method}@{spec.lam:g}"
    for metric in ("mean", "tokens", "think"):
        (line,) = plots[metric].layout.shapes
        assert line.x0 == line.x1 == spec.lam
        texts = [a.text for a in plots[metric].layout.annotations]
        assert chat_label(spec) in texts


def test_marker_of_a_module_merge_on_the_heatmap_and_a_note_elsewhere(results):
    bench = results.benchmarks[0]
    spec = MergeSpec("linear", 0.5, module_lams={"attn": 0.75, "mlp": 0.25})
    for heat in results.heatmaps(bench, chat=spec):
        (star,) = marker(heat)
        assert (star.x[0], star.y[0]) == (0.25, 0.75)
    pareto = results.figures(bench, ["linear"], chat=spec)["pareto"]
    assert not marker(pareto)
    assert any(chat_label(spec) in a.text for a in pareto.layout.annotations)


def test_level_figure_marks_each_level_of_the_chat_method(results):
    bench = results.benchmarks[0]
    spec = MergeSpec("linear", 0.58)
    figure = results.level_figure(bench, "linear", chat=spec)
    (stars,) = marker(figure)
    curves = [t for t in figure.data if t.customdata is not None]
    assert len(stars.x) == len(curves)
    for x, y, curve in zip(stars.x, stars.y, curves, strict=True):
        lams = [json.loads(merge)["lam"] for merge in curve.customdata]
        best = min(range(len(lams)), key=lambda i: abs(lams[i] - spec.lam))
        assert (x, y) == (curve.x[best], curve.y[best])


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    return Dashboard(device="cpu", db=tmp_path_factory.mktemp("board") / "results.duckdb")


def test_dashboard_links_its_own_pair(dashboard, tmp_path: Path):
    spec = MergeSpec("slerp", 0.7, module_lams={"attn": 0.9})
    line = dashboard.merge_command(spec, out=str(tmp_path / "merged"))
    assert "--direct assets/pair/direct --thinking assets/pair/thinking" in line
    config = parsed_command(line)
    assert config.checked().spec == dashboard.check(spec)
    (tmp_path / "m.yaml").write_text(dashboard.merge_yaml(spec))
    assert MergeConfig.from_file(tmp_path / "m.yaml").checked().spec == dashboard.check(spec)
    state = dashboard.read_link(query_of(dashboard.share_query(spec, "hi")))
    assert (state.spec, state.prompt) == (dashboard.check(spec), "hi")
    merge = '{"method": "slerp", "lam": 0.25, "module_lams": {"attn": 0.5}}'
    assert dashboard.point_merge(merge) == dashboard.check(
        MergeSpec("slerp", 0.25, module_lams={"attn": 0.5})
    )
    state = dashboard.read_link({"layers": "0-999"})  # the embedded pair has fewer layers
    assert state.spec == dashboard.check(MergeSpec()) and "layers='0-999'" in state.warning()
