"""Linked views in a real browser (Debian's chromium through Playwright, one app for the file).

A link with method, λ, a module λ and a prompt sets the chat; a bad link warns in one line
and keeps the defaults; "Share link" gives a link that opens the same merge; "Copy as CLI /
YAML" puts on the clipboard what `spectrum merge` parses back to the chat's merge; the
explorer marks the chat's merge on its plots, and a click on a point (a curve's, then a
heatmap cell's) loads that point's merge into the chat. Screenshots: linked_url,
linked_share, linked_marker, linked_click (tmp_path, and $SPECTRUM_SCREENSHOTS when set).
"""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.sync_api import expect, sync_playwright
from test_app_server import SHIPPED_DB, launch_app
from test_browser import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, Screens

from spectrum.cli import build_parser
from spectrum.commands.merge import config_from_args
from spectrum.merge import MergeConfig, MergeSpec

TIMEOUT_MS = 90_000
PROMPT = "What is 12 + 30? Answer & explain #1"


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Iterator[tuple[str, object, Path]]:
    """(url, browser, folder) of one app on the embedded pair and one chromium."""
    assert Path(CHROMIUM).is_file(), "run.sh installs Debian's chromium; it is missing"
    folder = tmp_path_factory.mktemp("linked_app")
    shutil.copyfile(SHIPPED_DB, folder / "results.duckdb")
    with launch_app(folder) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield url, browser, folder
        browser.close()


@pytest.fixture
def page(app):
    """A fresh page (its own session); any console error or page error fails the test."""
    _, browser, _ = app
    context = browser.new_context(
        viewport=VIEWPORT, permissions=["clipboard-read", "clipboard-write"]
    )
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    yield page
    context.close()
    assert not problems, problems


def status(page):
    return page.locator("#merge-status")


def checked(spec: MergeSpec) -> MergeSpec:
    return spec.checked(has_base=True)  # the embedded pair comes with its base


def test_link_sets_the_chat_and_share_gives_it_back(app, page, tmp_path: Path):
    url, _, _ = app
    screens = Screens(page, tmp_path)
    page.goto(f"{url}?method=slerp&lam=0.7&attn=0.9&prompt={quote(PROMPT)}", wait_until="load")
    expect(status(page)).to_contain_text("slerp · λ 0.70 · attn 0.90", timeout=TIMEOUT_MS)
    expect(page.locator("#prompt textarea")).to_have_value(PROMPT)
    screens.take("linked_url")

    page.get_by_text("Share this merge").click()
    page.locator("#share").click()
    link = page.locator("#share-link textarea")
    expect(link).to_have_value(re.compile(r"^http://127\.0\.0\.1:\d+/\?method=slerp"))
    shared = link.input_value()
    page.locator("#copy-merge").click()
    expect(page.locator("#merge-cli")).to_contain_text("spectrum merge", timeout=TIMEOUT_MS)
    expect(page.locator("#merge-yaml")).to_contain_text("method: slerp")
    screens.take("linked_share", full_page=True)

    wanted = checked(MergeSpec("slerp", 0.7, module_lams={"attn": 0.9}))
    page.locator("#merge-cli button[aria-label=Copy]").click()
    words = shlex.split(page.evaluate("navigator.clipboard.readText()"))
    args = build_parser({"merge": "spectrum.commands.merge"}).parse_args(words[1:])
    assert words[:2] == ["spectrum", "merge"]
    assert config_from_args(args).checked().spec == wanted
    page.locator("#merge-yaml button[aria-label=Copy]").click()
    (tmp_path / "merge.yaml").write_text(page.evaluate("navigator.clipboard.readText()"))
    assert MergeConfig.from_file(tmp_path / "merge.yaml").checked().spec == wanted

    # The shared link, opened in a new session, is the same chat.
    other = page.context.new_page()
    other.goto(shared, wait_until="load")
    expect(status(other)).to_contain_text("slerp · λ 0.70 · attn 0.90", timeout=TIMEOUT_MS)
    expect(other.locator("#prompt textarea")).to_have_value(PROMPT)


def test_bad_link_warns_in_one_line_and_keeps_the_defaults(app, page):
    url, _, _ = app
    page.goto(f"{url}?method=nope&lam=abc&attn=0.25", wait_until="load")
    expect(status(page)).to_contain_text("linear · λ 0.50 · attn 0.25", timeout=TIMEOUT_MS)
    toast = page.get_by_text(re.compile(r"^This link's "))
    expect(toast).to_contain_text("method 'nope'")
    expect(toast).to_contain_text("lam='abc'")
    assert "\n" not in toast.inner_text()


def plot_point(page, plot: str, pick: str) -> dict:
    """Where (page pixels) a point of ``plot`` is, and the merge it carries; ``pick`` is a
    JS expression choosing [trace index, point index] from ``gd.data``."""
    return page.evaluate(
        """([selector, pick]) => {
          const gd = document.querySelector(selector + " .js-plotly-plot");
          const data = gd._fullData;  // decoded: figures ship numbers as base64 arrays
          const [i, j] = eval(pick)(data);
          const trace = data[i], size = gd._fullLayout._size;
          const box = gd.querySelector(".main-svg").getBoundingClientRect();
          const at = (axis, v) => gd._fullLayout[axis].d2p(v);
          const cell = trace.type === "heatmap";
          const x = cell ? trace.x[j[1]] : trace.x[j];
          const y = cell ? trace.y[j[0]] : trace.y[j];
          const merge = cell ? trace.customdata[j[0]][j[1]] : trace.customdata[j];
          return { x: box.left + size.l + at("xaxis", x), y: box.top + size.t + at("yaxis", y),
                   merge: JSON.parse(merge) };
        }""",
        [plot, pick],
    )


def marker_texts(page, plot: str) -> str:
    return page.locator(f"{plot} .js-plotly-plot").evaluate("gd => gd.textContent")


def test_explorer_marks_the_chat_merge_and_a_click_loads_a_point(app, page, tmp_path: Path):
    url, _, _ = app
    screens = Screens(page, tmp_path)
    page.goto(f"{url}?method=linear&lam=0.62", wait_until="load")
    expect(status(page)).to_contain_text("linear · λ 0.62", timeout=TIMEOUT_MS)
    page.get_by_role("tab", name="Spectrum explorer").click()
    chat_line = page.locator("#explorer-chat")
    expect(chat_line).to_contain_text("linear · λ 0.62", timeout=TIMEOUT_MS)
    for plot in ("#plot-pareto", "#plot-accuracy", "#plot-tokens", "#plot-think"):
        expect(page.locator(f"{plot} .js-plotly-plot")).to_contain_text(
            "chat: linear@0.62", timeout=TIMEOUT_MS
        )
    # The Pareto plot's star sits on a stored point: it is drawn as a path like the others.
    stars = page.locator("#plot-pareto .scatterlayer .trace").last.locator(".points path")
    assert stars.count() == 1
    page.locator("#plot-pareto").scroll_into_view_if_needed()
    screens.take("linked_marker", full_page=True)

    # A point of another method's curve on the accuracy plot: its merge goes to the chat.
    page.locator("#plot-accuracy").scroll_into_view_if_needed()
    other = """data => {
      const i = data.findIndex(t => t.customdata && t.name && t.name !== "linear");
      return [i, Math.floor(data[i].customdata.length / 2)];
    }"""
    point = plot_point(page, "#plot-accuracy", other)
    merge = point["merge"]
    assert merge["method"] != "linear"
    page.mouse.click(point["x"], point["y"])
    label = f"{merge['method']} · λ {merge['lam']:.2f}"
    expect(status(page)).to_contain_text(label, timeout=TIMEOUT_MS)
    expect(chat_line).to_contain_text(label, timeout=TIMEOUT_MS)
    expect(page.locator("#plot-accuracy .js-plotly-plot")).to_contain_text(
        f"chat: {merge['method']}@{merge['lam']:g}", timeout=TIMEOUT_MS
    )
    screens.take("linked_click", full_page=True)

    # The plots were redrawn with the new marker; a heatmap cell still clicks through.
    page.locator("#heatmaps").scroll_into_view_if_needed()
    cell = """data => {
      const z = data[0].customdata;
      const row = z.findIndex(r => r.some(c => c));
      return [0, [row, z[row].findIndex(c => c)]];
    }"""
    point = plot_point(page, "#heatmaps", cell)
    page.mouse.click(point["x"], point["y"])
    lams = point["merge"]["module_lams"]
    wanted = (
        f"linear · λ {point['merge']['lam']:.2f} · attn {lams['attn']:.2f} mlp {lams['mlp']:.2f}"
    )
    expect(status(page)).to_contain_text(wanted, timeout=TIMEOUT_MS)
    expect(chat_line).to_contain_text(wanted, timeout=TIMEOUT_MS)


def test_two_pages_keep_their_own_links_and_markers(app):
    """Two visitors open different links at once: each chat loads its own link's merge and
    each explorer marks its own page's merge (the merge is per page, never shared)."""
    url, browser, _ = app
    links = {"slerp": (0.3, "slerp · λ 0.30"), "linear": (0.85, "linear · λ 0.85")}
    contexts = [browser.new_context(viewport=VIEWPORT) for _ in links]
    try:
        pages = [context.new_page() for context in contexts]
        for page, (method, (lam, _)) in zip(pages, links.items(), strict=True):
            page.goto(f"{url}?method={method}&lam={lam}", wait_until="commit")
        for page, (_, label) in zip(pages, links.values(), strict=True):
            expect(status(page)).to_contain_text(label, timeout=TIMEOUT_MS)
            page.get_by_role("tab", name="Spectrum explorer").click()
        for page, (method, (lam, label)) in zip(pages, links.items(), strict=True):
            expect(page.locator("#explorer-chat")).to_contain_text(label, timeout=TIMEOUT_MS)
            expect(page.locator("#plot-accuracy .js-plotly-plot")).to_contain_text(
                f"chat: {method}@{lam:g}", timeout=TIMEOUT_MS
            )
    finally:
        for context in contexts:
            context.close()
