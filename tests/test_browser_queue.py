"""Three pages at once in a real Chromium: the page that has to wait shows its message in
every column at once, with its place in the queue over the columns, and then its answers.

The app runs two chat turns at a time (``demo.queue(default_concurrency_limit=2)``), so
with two pages streaming a third page's turn waits in Gradio's queue.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from playwright.sync_api import expect, sync_playwright
from test_app_server import SHIPPED_DB, launch_app
from test_browser import CHROMIUM, CHROMIUM_ARGS, GENERATION_TIMEOUT_MS, VIEWPORT, Screens

from spectrum.eval.benchmarks.synthetic import make_problems

COLUMNS = ("direct", "merged", "thinking")
LARGE = {"width": 1920, "height": 1080}
QUEUE_TEXT = re.compile(r"queue: \d+/\d+")
# The queue note can show for well under a second on a quiet machine, too briefly for
# polling: an observer notes every moment it shows, and whether the message showed then.
WATCH_QUEUE = """expression => {
  window.queueSeen = [];
  const look = () => {
    const column = document.querySelector('#chat-direct');
    const text = column ? column.innerText : '';
    if (/queue: \\d+\\/\\d+/.test(text)) {
      window.queueSeen.push({message: text.includes(expression)});
    }
  };
  new MutationObserver(look).observe(document.body,
    {subtree: true, childList: true, characterData: true});
}"""


def test_third_page_shows_its_message_and_queue_place(tmp_path: Path):
    shutil.copyfile(SHIPPED_DB, tmp_path / "results.duckdb")
    # Level-5 problems: the thinking column's longest traces, so the first two turns run
    # long enough for the third to wait.
    prompts = [p.messages[0]["content"] for p in make_problems(5, 3, seed=11)]
    expression = prompts[-1].splitlines()[0]
    with launch_app(tmp_path) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        # The first page on a large screen: its columns grow with the window, the
        # examples stay in view.
        pages = [
            browser.new_page(viewport=LARGE),
            *(browser.new_page(viewport=VIEWPORT) for _ in prompts[1:]),
        ]
        for page in pages:
            page.goto(url, wait_until="load")
            expect(page.locator("#merge-status")).to_contain_text("λ 0.50", timeout=60_000)
        heights = [page.locator("#chat-direct").bounding_box()["height"] for page in pages]
        assert heights[0] > 1.5 * heights[1] >= 1.5 * 300, heights
        expect(pages[0].get_by_role("button", name=re.compile(r"^Level 5: "))).to_be_in_viewport()
        Screens(pages[0], tmp_path).take("chat_large_screen")
        for page, prompt in zip(pages, prompts, strict=True):
            page.locator("#prompt textarea").fill(prompt)
        waiting = pages[-1]
        waiting.evaluate(WATCH_QUEUE, expression)
        for page in pages:
            page.locator("#send").click()

        # Its own message shows in every column before its turn comes.
        for column in COLUMNS:
            expect(waiting.locator(f"#chat-{column}")).to_contain_text(expression)
        waiting.wait_for_function("window.queueSeen.length > 0", timeout=60_000)
        Screens(waiting, tmp_path).take("queue_third_page")
        # Whenever its place in the queue showed, its message showed with it.
        assert all(moment["message"] for moment in waiting.evaluate("window.queueSeen"))

        # Every page gets its three answers; the queue note goes once the turn runs.
        for page in pages:
            expect(page.locator("#prompt textarea")).to_have_value(
                "", timeout=GENERATION_TIMEOUT_MS
            )
            for column in COLUMNS:
                expect(page.locator(f"#chat-{column}")).to_contain_text(re.compile(r"\d+ tokens"))
        expect(waiting.get_by_text(QUEUE_TEXT)).to_have_count(0)
        browser.close()
