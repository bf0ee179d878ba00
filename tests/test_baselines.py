"""Baselines beside the merges (budget forcing, NoThinking) and sweeps over λ per module
kind, on the embedded pair through the real generator, sweep and DuckDB store."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from spectrum.cli import main
from spectrum.eval import store
from spectrum.eval.benchmarks import synthetic
from spectrum.eval.figures import module_heatmap
from spectrum.eval.report import build_report
from spectrum.eval.results import improvements, merges_vs_baselines, parents, summaries
from spectrum.generate.batch import DecodingSettings, TransformersGenerator, chat_prompts

PAIR = Path(__file__).resolve().parents[1] / "assets" / "pair"
PROBLEMS = [synthetic.make_problems(level, 1, seed=0)[0] for level in (2, 4, 5)]
CONVERSATIONS = [list(problem.messages) for problem in PROBLEMS]
# A short closing text keeps the arithmetic of the test simple: it is one token here.
THINK_END = "</think>"


@pytest.fixture(scope="module")
def thinking():
    tokenizer = AutoTokenizer.from_pretrained(PAIR / "thinking")
    model = AutoModelForCausalLM.from_pretrained(PAIR / "thinking").eval()
    return TransformersGenerator(model, tokenizer, batch_size=8), tokenizer


def thought_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text.split(THINK_END)[0], add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("budget", [1, 6, 20])
def test_budget_forcing_never_thinks_past_its_budget(thinking, budget):
    generator, tokenizer = thinking
    plain = generator.generate(CONVERSATIONS, DecodingSettings(do_sample=False, max_new_tokens=300))
    assert all(thought_tokens(tokenizer, g.text) > 20 for g in plain)  # it thinks long
    settings = DecodingSettings(
        do_sample=False, max_new_tokens=300, think_budget=budget, think_end=THINK_END,
        answer_cue="",
    )  # fmt: skip
    for forced, full in zip(generator.generate(CONVERSATIONS, settings), plain, strict=True):
        assert forced.thinks and thought_tokens(tokenizer, forced.text) <= budget
        # The thinking part is the unforced one, cut at the budget.
        assert full.text.startswith(forced.text.split(THINK_END)[0])
        # The inserted delimiter (one token) is counted in n_tokens and apart; n_tokens is
        # every token of the response (the EOS that ends it included).
        assert forced.n_inserted == 1
        ids = tokenizer(forced.text, add_special_tokens=False)["input_ids"]
        assert forced.n_tokens == len(ids) + forced.finished


def test_no_thinking_prefills_a_finished_block_and_never_opens_one(thinking):
    generator, tokenizer = thinking
    settings = DecodingSettings(do_sample=False, max_new_tokens=120, no_thinking=True)
    prompts = chat_prompts(tokenizer, CONVERSATIONS, settings)
    # Ma et al.'s prefill, closed with the pair's own delimiter.
    block = "<think>\nOkay, I think I have finished thinking.\n</think>\n\n"
    assert all(prompt.endswith(block) for prompt in prompts)
    for generation in generator.generate(CONVERSATIONS, settings):
        assert "<think>" not in generation.text and not generation.thinks


def test_baseline_settings_are_checked():
    from spectrum.errors import UserError

    with pytest.raises(UserError, match="at least 1"):
        DecodingSettings(think_budget=0)
    with pytest.raises(UserError, match="pick one"):
        DecodingSettings(think_budget=8, no_thinking=True)
    # Plain decoding is stored as it always was: old configuration ids stay valid.
    assert set(DecodingSettings().as_dict()) == {
        "temperature", "top_p", "top_k", "max_new_tokens", "do_sample"
    }  # fmt: skip


def sweep(db: Path, *extra: str) -> None:
    args = ["sweep", "--direct", str(PAIR / "direct"), "--thinking", str(PAIR / "thinking")]
    args += ["--bench", "synthetic", "--levels", "3,5", "--limit", "2", "--greedy"]
    args += ["--max-new-tokens", "160", "--db", str(db), "--no-progress", *extra]
    assert main(args) == 0


def test_sweep_stores_baselines_as_their_own_rows(tmp_path):
    db = tmp_path / "results.duckdb"
    baseline_args = ["--budgets", "4,40", "--no-thinking", "--think-end", THINK_END]
    sweep(db, "--methods", "linear", "--lam", "0,1", *baseline_args)
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            "SELECT method, lam, params, response, extracted FROM samples"
        ).fetchall()
        table = summaries(con)
    by_method = {}
    for method, lam, params, response, extracted in rows:
        by_method.setdefault(method, []).append((lam, json.loads(params), response, extracted))
        if method != "linear":
            assert lam == 1.0
        # Graded on the answer after the (forced) end of thinking.
        answer = response.rsplit(THINK_END, 1)[-1]
        assert extracted == synthetic.extract_boxed(answer)
    assert sorted(by_method) == ["budget_forcing", "linear", "no_thinking"]
    assert sorted({p["budget"] for _, p, _, _ in by_method["budget_forcing"]}) == [4, 40]
    # NoThinking's block is in the prompt: the response never opens or closes one.
    assert all(THINK_END not in response for _, _, response, _ in by_method["no_thinking"])
    # The parents are the plain models; baselines are candidates for improvements.
    found = parents(table, "synthetic")
    assert found["thinking"]["method"] == "linear" and found["direct"]["method"] == "linear"
    candidates = improvements(table)
    assert set(candidates["method"]) <= {"budget_forcing", "no_thinking"}
    # The report says whether a merge beats each baseline, and where the stages lie.
    versus = merges_vs_baselines(table)
    assert len(versus) == 3 and set(versus["baseline"]) == {"budget_forcing", "no_thinking"}
    page = build_report(db, tmp_path / "report.html").read_text()
    assert page.count("budget_forcing λ=1 budget=4, waits=0 (") == 1
    assert page.count("budget_forcing λ=1 budget=40, waits=0 (") == 1
    assert "no_thinking λ=1 (" in page
    assert "synthetic: linear stage 1 λ 0–0" in page and "synthetic:L5: linear stage" in page
    # Resuming does nothing more.
    before = len(rows)
    sweep(db, "--methods", "linear", "--lam", "0,1", *baseline_args)
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM samples").fetchone()[0] == before


def test_sweep_over_lam_per_module_kind_draws_a_heatmap(tmp_path):
    db = tmp_path / "results.duckdb"
    sweep(db, "--methods", "linear", "--lam", "0.5,attn=0|1,mlp=0|1")
    with duckdb.connect(str(db), read_only=True) as con:
        stored = con.execute("SELECT DISTINCT module_lams FROM samples").fetchall()
        table = summaries(con)
    assert {json.dumps(json.loads(m), sort_keys=True) for (m,) in stored} == {
        json.dumps({"attn": a, "mlp": m}, sort_keys=True) for a in (0.0, 1.0) for m in (0.0, 1.0)
    }
    figure = module_heatmap(table, "synthetic", "linear", "think")
    assert figure is not None and len(figure.data[0].z) == 2 and len(figure.data[0].z[0]) == 2
    # attn=1, mlp=1 (every kind but embed/norm/head at 1) thinks; attn=0, mlp=0 does not.
    z = {(y, x): v for y, row in zip(figure.data[0].y, figure.data[0].z, strict=True)
         for x, v in zip(figure.data[0].x, row, strict=True)}  # fmt: skip
    assert z[(1.0, 1.0)] > z[(0.0, 0.0)]
    page = build_report(db, tmp_path / "report.html").read_text()
    assert "linear: accuracy (Mean@k)" in page and "λ of mlp" in page


def test_old_databases_without_module_lams_still_read(tmp_path):
    db = tmp_path / "old.duckdb"
    con = store.connect(db)
    con.execute("ALTER TABLE samples DROP COLUMN module_lams")
    con.close()
    with duckdb.connect(str(db), read_only=True) as con:
        assert summaries(con).empty
