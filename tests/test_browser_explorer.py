"""The explorer in a real browser (Debian's chromium, Playwright): findings as a compact
table with the details folded, heatmaps whose title says where the other module kinds
sit, stored samples shown as the question and the rendered answer (thinking folded, math
rendered), and the run filter drawing one run's own points. On a copy of the shipped DB.
Screenshots go to tmp_path (and $SPECTRUM_SCREENSHOTS); their paths are printed."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import duckdb
from playwright.sync_api import expect, sync_playwright
from test_app_server import SHIPPED_DB, launch_app
from test_browser import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, Screens

LOAD_MS = 180_000
# The shipped DB's fine λ sweep of linear around the phase change (0.40:0.60:0.01; the
# coarse sweep before it had already stored 0.4, 0.5 and 0.6).
FINE_RUN = "9732121c"


def shoot(screens: Screens, locator, name: str) -> None:
    """One element, scrolled into view, into every screenshot folder."""
    locator.scroll_into_view_if_needed()
    for folder in screens.folders:
        path = folder / f"{name}.png"
        locator.screenshot(path=str(path))
        screens.paths.append(path)
    print(f"screenshot: {screens.paths[-1]}")


# λ of the accuracy-vs-λ plot's line (the explorer's second plot); plotly ships numpy
# arrays as {dtype, bdata: base64} (float64 here).
LINE_LAMS = """() => {
    const plot = document.querySelectorAll('.js-plotly-plot')[1];
    const line = plot && plot.data.find(t => t.mode === 'lines+markers');
    if (!line) return null;
    const x = line.x;
    if (!x.bdata) return Array.from(x);
    const bytes = Uint8Array.from(atob(x.bdata), c => c.charCodeAt(0));
    return Array.from(new Float64Array(bytes.buffer));
}"""


def accuracy_lams(page) -> list[float]:
    return page.evaluate(LINE_LAMS)


def test_explorer_findings_heatmaps_samples_and_run_filter(tmp_path: Path):
    assert Path(CHROMIUM).is_file(), "run.sh installs Debian's chromium; it is missing"
    shutil.copyfile(SHIPPED_DB, tmp_path / "results.duckdb")
    with duckdb.connect(str(SHIPPED_DB), read_only=True) as con:
        (run_id,) = con.execute(
            "SELECT DISTINCT run_id FROM samples WHERE run_id LIKE ?", [f"{FINE_RUN}%"]
        ).fetchone()
        fine = [lam for (lam,) in con.execute(
            "SELECT DISTINCT lam FROM samples WHERE run_id = ? AND method = 'linear' "
            "ORDER BY lam", [run_id],
        ).fetchall()]  # fmt: skip
        (greedy_runs,) = con.execute(
            "SELECT count(DISTINCT run_id) FROM samples WHERE NOT do_sample "
            "AND max_new_tokens = 160"
        ).fetchone()
    problems: list[str] = []
    with launch_app(tmp_path) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        screens = Screens(page, tmp_path)
        page.goto(url, wait_until="load")
        page.get_by_role("tab", name="Spectrum explorer").click()
        expect(page.locator("#heatmaps .js-plotly-plot")).to_have_count(2, timeout=LOAD_MS)

        # Findings: a row per kind, the gist shown, every detail folded away.
        findings = page.locator("#findings table.findings")
        expect(findings).to_be_visible(timeout=LOAD_MS)
        rows = findings.locator(":scope > tbody > tr, :scope > tr")
        assert 4 <= rows.count() <= 10
        expect(findings).to_contain_text("apparent improvements hold by the paired test")
        expect(findings.locator("details[open]")).to_have_count(0)
        expect(page.get_by_text("linear stage 1", exact=False)).to_be_hidden()
        assert findings.bounding_box()["height"] < 400  # not ~45 lines of text
        shoot(screens, findings, "explorer-findings-compact")
        findings.get_by_text("curves reach stage 3").click()  # a summary unfolds its table
        expect(findings.locator("details[open] table")).to_contain_text("stage 3 λ")
        shoot(screens, findings, "explorer-findings-unfolded")

        # Heatmaps: the title says where the kinds not plotted sit.
        heatmaps = page.locator("#heatmaps")
        expect(heatmaps).to_contain_text("other kinds: embed, norm, lm_head at λ=0.5")
        shoot(screens, heatmaps, "explorer-heatmap-caption")

        # Samples: the question, the answer rendered as math, the thinking folded.
        samples = page.locator("#samples")
        expect(samples).to_contain_text("Question", timeout=LOAD_MS)
        expect(samples).to_contain_text("Please reason step by step")
        expect(samples.locator(".katex").first).to_be_attached()
        expect(samples.locator("details summary").first).to_contain_text("Thinking")
        expect(samples.locator("details[open]")).to_have_count(0)
        shown = samples.inner_text()
        assert "<think>" not in shown and "</think>" not in shown and "\\boxed" not in shown
        assert not re.search(r"\bL\d-[0-9a-f]{10}\b", shown)  # no problem ids
        samples.locator("details summary").first.click()
        expect(samples.locator("details[open]")).to_have_count(1)
        shoot(screens, samples, "explorer-sample-question-answer")

        # The run filter: every run of the decoding, or the fine λ run alone.
        everything = accuracy_lams(page)
        run = page.locator("#explorer-run")
        expect(run.locator("input")).to_have_value(
            re.compile(rf"^all {greedy_runs} runs of this decoding")
        )
        run.locator("input").click()
        page.get_by_role("option", name=re.compile(FINE_RUN)).click()
        expect(page.locator("#explorer-methods input:checked")).to_have_count(1, timeout=LOAD_MS)
        page.wait_for_function(
            f"n => {{ const lams = ({LINE_LAMS})(); return lams && lams.length === n; }}",
            arg=len(fine),
            timeout=LOAD_MS,
        )
        assert accuracy_lams(page) == fine
        assert len(everything) > len(fine)  # the pooled view held the coarse grid too
        expect(run.locator("input")).to_have_value(re.compile(FINE_RUN))
        shoot(screens, page.locator("#explorer-run").locator("xpath=../.."), "explorer-run-filter")
        screens.take("explorer-one-run")
        browser.close()
    assert not problems, "\n".join(problems)
