"""The dashboard in a real browser: Debian's chromium driven by Playwright (no downloads).

Opens the page on the embedded pair, drags the λ slider, sends a prompt, waits for all
three columns to finish and checks the boxed answers render as math; stops a second
turn; opens the explorer (a few methods, legends that fit); starts a sweep, watches its
progress bar advance with Run disabled, and stops it; draws the weight analysis. Each tab
is screenshotted outside the tracked tree (pytest's tmp_path, and $SPECTRUM_SCREENSHOTS
when set; the paths are printed). Any browser console error or uncaught page error fails.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
import zipfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright
from test_app_server import REPO, SHIPPED_DB, launch_app
from transformers import AutoModelForCausalLM

from spectrum.eval.benchmarks.synthetic import make_problems

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
GENERATION_TIMEOUT_MS = 240_000
MAX_LEGEND_ENTRIES = 6  # three methods, two parents, the Pareto rings


class Screens:
    """Screenshots into tmp_path and, when $SPECTRUM_SCREENSHOTS names a folder, there too."""

    def __init__(self, page, folder: Path) -> None:
        self.page, self.folders = page, [folder]
        extra = os.environ.get("SPECTRUM_SCREENSHOTS")
        if extra:
            self.folders.append(Path(extra))
            Path(extra).mkdir(parents=True, exist_ok=True)
        self.paths: list[Path] = []

    def take(self, name: str, *, full_page: bool = False) -> Path:
        self.page.evaluate("window.scrollTo(0, 0)")
        for folder in self.folders:
            path = folder / f"{name}.png"
            self.page.screenshot(path=str(path), full_page=full_page)
            self.paths.append(path)
        print(f"screenshot: {self.paths[-1]}")
        return self.paths[-1]


def legend_entries(plot) -> int:
    return plot.locator("g.legend g.traces").count()


def legend_scrolls(plot) -> bool:
    """Plotly sizes its legend's scrollbar above zero only when the entries overflow."""
    box = plot.locator("g.legend rect.scrollbar").bounding_box()
    return box is not None and box["width"] > 0 and box["height"] > 0


def test_drag_slider_send_prompt_three_answers(tmp_path: Path):
    assert Path(CHROMIUM).is_file(), "run.sh installs Debian's chromium; it is missing"
    problems: list[str] = []
    # The results DB starts as the shipped one, as the app's default working copy does.
    shutil.copyfile(SHIPPED_DB, tmp_path / "results.duckdb")
    with launch_app(tmp_path) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.on(
            "console",
            lambda message: (
                problems.append(f"console: {message.text}") if message.type == "error" else None
            ),
        )
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        screens = Screens(page, tmp_path)
        page.goto(url, wait_until="load")
        status = page.locator("#merge-status")
        expect(status).to_contain_text("linear · λ 0.50", timeout=60_000)
        # The examples show without scrolling at 1280×800.
        expect(page.get_by_role("button", name=re.compile(r"^Level 5: "))).to_be_in_viewport()

        # Drag the thumb from the middle to about 0.8 and let go: a live re-merge.
        track = page.locator("#lam-slider input[type=range]")
        box = track.bounding_box()
        y = box["y"] + box["height"] / 2
        page.mouse.move(box["x"] + 0.5 * box["width"], y)
        page.mouse.down()
        page.mouse.move(box["x"] + 0.8 * box["width"], y, steps=8)
        page.mouse.up()
        # A drag re-merges as it goes; the status settles on where the thumb stopped.
        lam = f"{float(page.locator('#lam-slider input[type=number]').input_value()):.2f}"
        assert 0.7 <= float(lam) <= 0.9, lam
        expect(status).to_contain_text(f"linear · λ {lam}", timeout=60_000)
        expect(status).to_contain_text("served by the spectrum model")

        # Greedy decoding, so the page shows the same answers every run.
        page.get_by_text("Decoding", exact=True).click()
        page.get_by_label("greedy").check()
        prompt = make_problems(2, 1, seed=3)[0].messages[0]["content"]
        page.locator("#prompt textarea").fill(prompt)
        page.locator("#send").click()
        # The last update clears the prompt box: all three columns are done.
        expect(page.locator("#prompt textarea")).to_have_value("", timeout=GENERATION_TIMEOUT_MS)
        for column in ("direct", "merged", "thinking"):
            expect(page.locator(f"#chat-{column}")).to_contain_text(re.compile(r"\d+ tokens"))
        # The merged column is labelled with the merge the slider loaded.
        expect(page.locator("#chat-merged")).to_contain_text(f"linear · λ {lam} · ")
        expect(page.locator("#chat-thinking")).to_contain_text("Reasoning")
        # The reasoning block's title says how long it thought: tokens and seconds.
        expect(page.locator("#chat-thinking")).to_contain_text(
            re.compile(r"Reasoning\s+\d+ tokens \(\d+(\.\d+)?s\)")
        )
        # \boxed{…} answers render as math (KaTeX), not as a literal backslash command.
        answer = page.locator("#chat-direct .bot-row").last
        expect(answer.locator(".katex").first).to_be_attached()
        assert "\\boxed" not in answer.inner_text()
        # A finished turn opens the vote buttons (closed before any answer).
        expect(page.locator("#vote-merged")).to_be_enabled()
        screenshot = screens.take("chat")
        screens.take("chat-full", full_page=True)

        # Stop: lit while the three columns stream, it ends them and Send comes back.
        stop, send = page.locator("#stop"), page.locator("#send")
        level_5 = make_problems(5, 1, seed=4)[0].messages[0]["content"]
        page.locator("#prompt textarea").fill(level_5)
        send.click()
        expect(stop).to_be_enabled()
        stop.click()
        # The message showed in every column at once (kept with the stopped answers).
        for column in ("direct", "merged", "thinking"):
            expect(page.locator(f"#chat-{column}")).to_contain_text(level_5.splitlines()[0])
        expect(send).to_be_enabled(timeout=60_000)
        expect(stop).to_be_disabled()
        expect(page.locator("#prompt textarea")).to_have_value("")  # the turn was kept
        # A stopped answer says so, and a stopped turn takes no vote. (On a quiet machine the
        # three answers may all end before the click lands: then nothing was stopped;
        # tests/test_app_dashboard.py stops a turn deterministically.)
        columns = page.locator("#chat-direct, #chat-merged, #chat-thinking")
        expect(page.locator("#vote-merged")).to_be_enabled(
            enabled=not columns.filter(has_text="stopped").count()
        )
        screens.take("stopped")

        # The embedded pair answers single prompts: the page says history is off, and an
        # example starts a new conversation (the earlier turns leave every column).
        expect(page.locator("#history-note")).to_contain_text("History is off")
        page.get_by_role("button", name=re.compile(r"^Level 1: ")).click()
        for column in ("direct", "merged", "thinking"):
            expect(page.locator(f"#chat-{column} .bot-row")).to_have_count(0)
        expect(page.locator("#prompt textarea")).not_to_have_value("")
        screens.take("example-starts-fresh")

        # The arrow keys move λ and re-merge too (not only a drag's release).
        track.focus()
        page.keyboard.press("ArrowRight")
        stepped = f"{float(lam) + 0.05:.2f}"
        expect(status).to_contain_text(f"linear · λ {stepped}", timeout=60_000)

        # Pick ties and press Send at once, while it prepares: the answer is the merge the
        # controls show, never the previous one.
        page.get_by_label("Merge method").click()
        page.get_by_role("option", name="ties", exact=True).click()
        page.locator("#send").click()
        expect(page.locator("#prompt textarea")).to_have_value("", timeout=GENERATION_TIMEOUT_MS)
        expect(page.locator("#chat-merged")).to_contain_text(f"ties · λ {stepped}")
        screens.take("ties-at-once")

        # Arena: the columns become Model A / B / C in a shuffled order; the vote names them.
        page.locator("#arena input[type=checkbox]").check()
        expect(page.locator("#vote-direct")).to_have_text("A")  # the page is in arena mode
        page.get_by_role("button", name=re.compile(r"^Level 2: ")).click()
        expect(page.locator("#prompt textarea")).not_to_have_value("")  # the example is in
        page.locator("#send").click()
        expect(page.locator("#prompt textarea")).to_have_value("", timeout=GENERATION_TIMEOUT_MS)
        titles = [page.locator(f"#chat-{column}") for column in ("direct", "merged", "thinking")]
        for title, name in zip(titles, ("Model A", "Model B", "Model C"), strict=True):
            expect(title).to_contain_text(name)
        assert not any("ties ·" in title.inner_text() for title in titles)  # nothing gives it away
        screens.take("arena-blind")
        page.locator("#vote-direct").click()  # the button now reads "A"
        # Named after the vote ("Model A: Thinking (λ = 1)"; a shuffle that came out in the
        # plain order reads as the plain titles).
        expect(titles[0]).to_contain_text(re.compile(r"Direct \(λ = 0\)|Merged — |Thinking \(λ"))
        expect(page.locator("#vote-direct")).to_be_disabled()
        screens.take("arena-revealed")

        # Export into exports/ (made if missing) and download it as a zip: a checkpoint.
        name = f"browser-{uuid.uuid4().hex[:8]}"
        try:
            page.get_by_text("Export merged model", exact=True).first.click()
            # Fill once the opened accordion has mounted the box (a box filled while it
            # mounts is set back to its default).
            folder = page.locator("#export-folder textarea")
            expect(folder).to_be_visible()
            expect(folder).to_have_value("exports/merged")
            folder.fill(f"exports/{name}")
            expect(folder).to_have_value(f"exports/{name}")
            page.locator("#export-button").click()
            expect(page.locator("#export-status")).to_contain_text(name, timeout=120_000)
            expect(page.locator("#export-download")).to_be_visible(timeout=60_000)
            with page.expect_download(timeout=60_000) as download:
                page.locator("#export-download").click()
            saved = tmp_path / "download.zip"
            download.value.save_as(saved)
            with zipfile.ZipFile(saved) as opened:
                assert f"{name}/model.safetensors" in opened.namelist(), opened.namelist()
                opened.extractall(tmp_path / "download")
            loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "download" / name)
            assert loaded.config.num_hidden_layers > 0
            screens.take("export-download")
        finally:
            shutil.rmtree(REPO / "exports" / name, ignore_errors=True)  # this test's own

        # Opening the explorer draws the stored results without pressing "Load": the
        # parents and a few methods, so every legend fits.
        page.get_by_role("tab", name="Spectrum explorer").click()
        expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=120_000)
        # Six plots with legends (style bleed among them), then the (λ_attn, λ_mlp)
        # heatmaps of the shipped sweep.
        expect(page.locator(".js-plotly-plot")).to_have_count(8, timeout=60_000)
        expect(page.locator("#heatmaps .js-plotly-plot")).to_have_count(2)
        ticked = page.locator("#explorer-methods input[type=checkbox]:checked")
        assert 1 <= ticked.count() <= 3
        for plot in page.locator(".js-plotly-plot").all()[:6]:
            assert 0 < legend_entries(plot) <= MAX_LEGEND_ENTRIES
            assert not legend_scrolls(plot)
        expect(page.locator("#findings")).to_contain_text("stage 3")
        expect(page.locator("#findings")).to_contain_text("budget_forcing")
        # The vote above is on the leaderboard, with its intervals.
        page.get_by_text("Human-preference leaderboard", exact=False).click()
        expect(page.locator("#leaderboard")).to_contain_text("Elo")
        expect(page.locator("#leaderboard")).to_contain_text(f"ties@{float(stepped):g}")
        screens.take("explorer")
        screens.take("explorer-full", full_page=True)

        # A page sweep: the bar advances while Run is greyed and Stop lit; Stop keeps the
        # stored samples (a later Run resumes).
        page.get_by_role("tab", name="Sweep").click()
        page.get_by_label("λ grid (start:stop:step or a list)").fill("0:1:0.25")
        # 5 λ × 5 levels × 60 problems: long enough on any machine to be stopped midway.
        page.get_by_label("Problems (per level: synthetic)").fill("60")
        page.get_by_label("Results database", exact=True).fill(str(tmp_path / "sweep.duckdb"))
        run, halt = page.locator("#sweep"), page.locator("#sweep-stop")
        bar = page.locator("#sweep-progress progress")
        run.click()
        expect(run).to_be_disabled(timeout=30_000)
        expect(halt).to_be_enabled()
        expect(bar).to_have_attribute("value", re.compile(r"^[1-9]\d*$"), timeout=120_000)
        first = int(bar.get_attribute("value"))
        expect(bar).not_to_have_attribute("value", str(first), timeout=120_000)
        assert int(bar.get_attribute("value")) > first  # it advanced
        expect(run).to_be_disabled()
        expect(page.locator("#sweep-progress")).to_contain_text(re.compile(r"about .* left"))
        screens.take("sweep-running")
        halt.click()
        status = page.locator("#sweep-status")
        expect(status).to_contain_text("Stopped", timeout=120_000)
        expect(run).to_be_enabled()
        expect(halt).to_be_disabled()
        assert int(bar.get_attribute("value")) < int(bar.get_attribute("max"))
        screens.take("sweep-stopped")

        # The weight analysis, in the same palette.
        page.get_by_role("tab", name="Weights").click()
        page.locator("#analyze").click()
        expect(page.locator(".js-plotly-plot:visible")).to_have_count(4, timeout=120_000)
        screens.take("weights")
        browser.close()
    assert screenshot.stat().st_size > 10_000
    assert not problems, "\n".join(problems)


def test_on_a_phone_the_three_answers_stay_side_by_side(tmp_path: Path):
    """At a phone's width the columns neither stack nor shrink: one per screen, swiped."""
    with launch_app(tmp_path) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
        page.goto(url, wait_until="load")
        expect(page.locator("#merge-status")).to_contain_text("linear", timeout=60_000)
        boxes = [
            page.locator(f"#chat-{c}").bounding_box() for c in ("direct", "merged", "thinking")
        ]
        assert len({round(box["y"]) for box in boxes}) == 1  # one row
        row = page.locator("#chat-row")
        width = row.evaluate("el => el.clientWidth")
        assert all(box["width"] > 0.8 * width for box in boxes)  # each nearly a screen wide
        assert row.evaluate("el => el.scrollWidth > 2 * el.clientWidth")
        row.evaluate("el => el.scrollBy(el.clientWidth, 0)")  # a swipe to the next column
        page.wait_for_timeout(500)
        merged = page.locator("#chat-merged").bounding_box()
        assert 0 <= merged["x"] < 390 - merged["width"] / 2  # now the one in view
        Screens(page, tmp_path).take("phone-swiped")
        browser.close()
