"""The dashboard in a real browser: Debian's chromium driven by Playwright (no downloads).

Opens the page on the embedded pair, drags the λ slider, sends a prompt, waits for all
three columns to finish, saves a screenshot outside the tracked tree (pytest's tmp_path;
the path is printed) and fails on any browser console error or uncaught page error.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from playwright.sync_api import expect, sync_playwright
from test_app_server import SHIPPED_DB, launch_app

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
        page.goto(url, wait_until="load")
        status = page.locator("#merge-status")
        expect(status).to_contain_text("linear · λ 0.50", timeout=60_000)

        # Drag the thumb from the middle to about 0.8 and let go: a live re-merge.
        track = page.locator("#lam-slider input[type=range]")
        box = track.bounding_box()
        y = box["y"] + box["height"] / 2
        page.mouse.move(box["x"] + 0.5 * box["width"], y)
        page.mouse.down()
        page.mouse.move(box["x"] + 0.8 * box["width"], y, steps=8)
        page.mouse.up()
        expect(status).to_contain_text(re.compile(r"linear · λ 0\.(7|8|9)\d"), timeout=60_000)
        expect(status).to_contain_text("served by the spectrum model")
        lam = re.search(r"λ (0\.\d\d)", status.inner_text()).group(1)

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

        page.evaluate("window.scrollTo(0, 0)")
        screenshot = tmp_path / "dashboard.png"
        page.screenshot(path=str(screenshot))
        page.screenshot(path=str(tmp_path / "dashboard-full.png"), full_page=True)
        print(f"screenshots: {screenshot}, {tmp_path / 'dashboard-full.png'}")

        # Opening the explorer draws the stored results without pressing "Load".
        page.get_by_role("tab", name="Spectrum explorer").click()
        expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=60_000)
        expect(page.locator(".js-plotly-plot")).to_have_count(4)
        page.screenshot(path=str(tmp_path / "explorer.png"))
        browser.close()
    assert screenshot.stat().st_size > 10_000
    assert not problems, "\n".join(problems)
