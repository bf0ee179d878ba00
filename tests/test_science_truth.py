"""Truthful science (issue 23): intervals that stay honest at 0 or n successes, paired
tests behind every comparison, rows labelled for what they are, statements as JSON.

Intervals are checked against scipy (an independent implementation) or against
closed forms worked out by hand, never against the code under test.
"""

from __future__ import annotations

import json
import math
import shutil
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from transformers import AutoModelForCausalLM, AutoTokenizer

from spectrum.cli import main
from spectrum.errors import UserError
from spectrum.eval import store
from spectrum.eval.benchmarks import synthetic
from spectrum.eval.metrics import (
    ProblemSamples,
    compare,
    newcombe_paired_ci,
    summarize,
    t_ci,
    wilson_ci,
)
from spectrum.eval.results import improvements, merges_vs_baselines, summaries
from spectrum.generate.batch import DecodingSettings, TransformersGenerator, chat_prompts

Z90 = 1.6448536269514722  # the standard normal's 95 % quantile: 90 % two-sided


def problem(correct: list[bool], tokens: list[int]) -> ProblemSamples:
    return ProblemSamples(correct, ["1"] * len(correct), tokens, [True] * len(correct),
                          [True] * len(correct))  # fmt: skip


@pytest.mark.parametrize("successes, n", [(0, 10), (10, 10), (50, 50), (3, 7), (34, 50), (1, 1)])
def test_wilson_matches_scipy(successes, n):
    expected = stats.binomtest(successes, n).proportion_ci(confidence_level=0.9, method="wilson")
    assert wilson_ci(successes, n) == pytest.approx((expected.low, expected.high), abs=1e-12)


def test_one_sample_per_problem_accuracy_is_wilson_and_never_zero_width():
    perfect = [problem([True], [10])] * 50
    mean = summarize(perfect)["mean"]
    assert mean.method == "wilson" and mean.value == 1.0 and mean.high == 1.0
    # Wilson at n/n: the lower bound is n / (n + z²), by hand.
    assert mean.low == pytest.approx(50 / (50 + Z90**2), abs=1e-12)
    assert summarize(perfect)["tokens"].method == "bootstrap"  # a count, not 0/1
    several = [problem([True, True], [10, 12])] * 50
    assert summarize(several)["mean"].method == "bootstrap"  # k > 1: over problems


def test_the_cli_offers_every_interval():
    from spectrum.commands.report import INTERVALS as OFFERED
    from spectrum.eval.metrics import INTERVALS

    assert OFFERED == INTERVALS


def test_t_interval_matches_scipy():
    values = [0.52, 0.61, 0.58, 0.49, 0.66]
    expected = stats.ttest_1samp(values, 0.0).confidence_interval(confidence_level=0.9)
    assert t_ci(values) == pytest.approx((expected.low, expected.high), abs=1e-12)
    assert all(math.isnan(v) for v in t_ci([0.5]))  # one run has no spread


def test_t_runs_is_a_student_t_over_sampling_runs():
    # Three problems, three runs: run j is sample j of every problem.
    correct = [[True, False, True], [True, True, False], [False, False, True]]
    tokens = [[10, 20, 30], [5, 5, 9], [40, 30, 20]]
    found = summarize([problem(c, t) for c, t in zip(correct, tokens, strict=True)],
                      interval="t_runs")  # fmt: skip
    runs = np.array(correct, dtype=float).mean(axis=0)  # 2/3, 1/3, 2/3
    expected = stats.ttest_1samp(runs, 0.0).confidence_interval(confidence_level=0.9)
    assert found["mean"].method == "t_runs"
    assert (found["mean"].low, found["mean"].high) == pytest.approx(
        (expected.low, expected.high), abs=1e-12
    )
    token_runs = np.array(tokens, dtype=float).mean(axis=0)
    expected = stats.ttest_1samp(token_runs, 0.0).confidence_interval(confidence_level=0.9)
    assert found["tokens"].low == pytest.approx(expected.low, abs=1e-9)


def test_newcombe_paired_interval_by_hand():
    # All 50 problems right on both sides: no discordant pair, φ = 0, and each side's
    # Wilson interval is [n/(n+z²), 1]; the difference's interval is ±z²/(n+z²).
    half = Z90**2 / (50 + Z90**2)
    assert newcombe_paired_ci(50, 0, 0, 0) == pytest.approx((-half, half), abs=1e-12)
    # A general table, from Newcombe's (1998) method 10 written out with scipy's Wilson.
    both, only_a, only_b, neither = 20, 9, 3, 18
    n = both + only_a + only_b + neither
    p_a, p_b = (both + only_a) / n, (both + only_b) / n
    ci_a = stats.binomtest(both + only_a, n).proportion_ci(0.9, "wilson")
    ci_b = stats.binomtest(both + only_b, n).proportion_ci(0.9, "wilson")
    phi = (both * neither - only_a * only_b) / math.sqrt(
        (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    )
    low = (p_a - p_b) - math.sqrt((p_a - ci_a.low) ** 2 - 2 * phi * (p_a - ci_a.low)
                                  * (ci_b.high - p_b) + (ci_b.high - p_b) ** 2)  # fmt: skip
    high = (p_a - p_b) + math.sqrt((ci_a.high - p_a) ** 2 - 2 * phi * (ci_a.high - p_a)
                                   * (p_b - ci_b.low) + (p_b - ci_b.low) ** 2)  # fmt: skip
    assert newcombe_paired_ci(both, only_a, only_b, neither) == pytest.approx((low, high))
    assert low < 0.12 < high  # the point difference (9 − 3)/50 lies inside


def test_an_improvement_needs_both_bounds():
    reference = [problem([True, True], [100 + 50 * i, 100 + 50 * i]) for i in range(20)]
    # The reference's Token#N is 100 + 50·9.5 = 575: an improvement saves more than 2 %
    # of it (11.5 tokens) for sure. 3 fewer on every problem is not enough.
    cheaper = [problem([True, True], [97 + 50 * i, 97 + 50 * i]) for i in range(20)]
    assert compare(cheaper, reference).verdict == "not distinguishable"
    # 20 fewer on every problem: the whole interval is below −11.5 tokens.
    cheapest = [problem([True, True], [80 + 50 * i, 80 + 50 * i]) for i in range(20)]
    found = compare(cheapest, reference)
    assert found.verdict == "improvement" and found.tokens.high == pytest.approx(-20.0)
    # Paired, not unpaired: the problems' own lengths spread far more than 20 tokens, so
    # the two configurations' separate intervals overlap; the paired difference does not.
    alone = [summarize(side)["tokens"] for side in (cheapest, reference)]
    assert alone[0].high > alone[1].low
    # Short answers: more than one whole token must be saved for sure (2 % of 20 is less).
    short = [problem([True], [20])] * 30
    assert compare([problem([True], [19])] * 30, short, margin=0.2).verdict == (
        "not distinguishable"
    )
    assert compare([problem([True], [18])] * 30, short, margin=0.2).verdict == "improvement"


def test_equal_accuracy_at_k1_is_not_an_improvement_without_a_margin():
    # 50/50 on both sides, 10 tokens fewer everywhere: the accuracy difference's lower
    # bound is −z²/(n+z²) < 0, so with margin 0 it is not distinguishable; a margin of
    # 0.06 (> 0.0513) lets the token saving count.
    reference = [problem([True], [50])] * 50
    candidate = [problem([True], [40])] * 50
    strict = compare(candidate, reference)
    assert strict.accuracy.method == "newcombe" and strict.verdict == "not distinguishable"
    assert compare(candidate, reference, margin=0.06).verdict == "improvement"


def test_t_runs_comparison_pairs_run_by_run():
    reference = [problem([True, False, True, True], [30, 31, 29, 30]) for _ in range(10)]
    candidate = [problem([True, True, False, True], [20, 22, 19, 21]) for _ in range(10)]
    found = compare(candidate, reference, interval="t_runs")
    diffs = np.array([20 - 30, 22 - 31, 19 - 29, 21 - 30], dtype=float)
    expected = stats.ttest_1samp(diffs, 0.0).confidence_interval(confidence_level=0.9)
    assert found.tokens.method == "t_runs"
    assert (found.tokens.low, found.tokens.high) == pytest.approx((expected.low, expected.high))
    assert found.accuracy.value == 0.0 and found.accuracy.method == "t_runs"


def _rows(method, lam, correct, tokens, *, module_lams=None, params="{}"):
    """One configuration on 40 problems, one sample each: ``correct(i)``, ``tokens(i)``."""
    cid = f"{method}-{lam}-{module_lams}-{params}"
    return [
        dict(
            config_id=cid, run_id="r", method=method, lam=lam, params=params,
            module_lams=module_lams, benchmark="synthetic", problem_id=f"p{i:02d}",
            sample_idx=0, response="<think>.</think>1", n_tokens=tokens(i), finished=True,
            thinks=lam > 0.4, extracted="1", gold="1", correct=correct(i), latency_s=0.1,
            created_at=datetime(2026, 1, 1),
        )
        for i in range(40)
    ]  # fmt: skip


@pytest.fixture
def db(tmp_path):
    """Parents, a real interpolation, a module-grid point, TIES at λ=1 and one baseline."""
    rows = []
    rows += _rows("linear", 0.0, lambda i: i < 20, lambda i: 5)
    rows += _rows("linear", 1.0, lambda i: i < 36, lambda i: 60 + i)
    rows += _rows("linear", 0.5, lambda i: 2 <= i < 38, lambda i: 40 + i)
    rows += _rows("linear", 0.5, lambda i: i < 39, lambda i: 20 + i,
                  module_lams=json.dumps({"attn": 1.0, "mlp": 1.0}))  # fmt: skip
    rows += _rows("ties", 1.0, lambda i: True, lambda i: 10)  # beats all, yet no merge
    rows += _rows("budget_forcing", 1.0, lambda i: i < 30, lambda i: 45 + i,
                  params=json.dumps({"budget": 32}))  # fmt: skip
    path = tmp_path / "truth.duckdb"
    with store.opened(path) as con:
        store.insert_frame(con, "samples", pd.DataFrame(rows))
    return path


def test_rows_say_what_they_are(db):
    with store.opened(db, read_only=True) as con:
        table = summaries(con)
    by = {(r.method, r.lam, pd.notna(r.module_lams)): r for r in table.itertuples()}
    assert by[("linear", 0.0, False)].kind == "parent"
    assert by[("linear", 0.5, False)].label == "linear λ=0.5"
    grid = by[("linear", 0.5, True)]
    assert grid.kind == "module_grid" and grid.label == "linear λ=0.5 (λ_attn=1, λ_mlp=1)"
    ties = by[("ties", 1.0, False)]
    assert ties.kind == "endpoint" and "neither a parent nor an interpolation" in ties.label
    assert by[("budget_forcing", 1.0, False)].label == "budget_forcing λ=1 budget=32"


def test_endpoints_are_not_merges_and_comparisons_are_paired(db):
    with store.opened(db, read_only=True) as con:
        table = summaries(con)
    versus = merges_vs_baselines(table).iloc[0]
    # TIES at λ=1 beats the baseline by far but is not a merge; the module-grid point is,
    # and is named with its module λs.
    assert versus["merge"] == "linear λ=0.5 (λ_attn=1, λ_mlp=1)"
    assert versus["verdict"] == "improvement" and versus["n_paired"] == 40
    assert versus["tokens_diff_low"] == versus["tokens_diff_high"] == -25.0  # constant
    better = improvements(table)
    named = dict(zip(better["label"], better["verdict"], strict=True))
    assert not any(label.startswith("ties") for label in named)
    # The plain λ=0.5 is as accurate as the thinking parent, but on other problems (2 won,
    # 2 lost): the paired accuracy interval reaches below 0, so 20 fewer tokens do not
    # make it an improvement. The grid point wins 3 and loses none.
    assert named["linear λ=0.5"] == "not distinguishable"
    assert named["linear λ=0.5 (λ_attn=1, λ_mlp=1)"] == "improvement"


def test_report_json_prints_every_statement(db, capsys):
    assert main(["report", "--db", str(db), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    kinds = {statement["kind"] for statement in found}
    assert {"parent", "improvement", "merge_vs_baseline", "endpoints"} <= kinds
    for statement in found:
        assert {"text", "numbers", "interval", "holds", "confirmed"} <= set(statement)
    versus = next(s for s in found if s["kind"] == "merge_vs_baseline")
    assert versus["holds"] is True and versus["confirmed"] is False
    assert versus["numbers"]["tokens_diff_high"] == -25.0
    assert "newcombe (accuracy), bootstrap (tokens)" in versus["interval"]
    parent = next(s for s in found if s["kind"] == "parent" and s["role"] == "thinking")
    assert parent["interval"] == "wilson"
    expected = stats.binomtest(36, 40).proportion_ci(0.9, "wilson")
    assert parent["numbers"]["mean_low"] == pytest.approx(expected.low)
    assert main(["report", "--db", str(db), "--json", "--margin", "-1"]) == 2


# --- Baselines as their authors define them, and the template a merge really has -------

PAIR = Path(__file__).resolve().parents[1] / "assets" / "pair"
CONVERSATIONS = [list(p.messages) for p in (synthetic.make_problems(4, 2, seed=0))]


@pytest.fixture(scope="module")
def thinking():
    tokenizer = AutoTokenizer.from_pretrained(PAIR / "thinking")
    model = AutoModelForCausalLM.from_pretrained(PAIR / "thinking").eval()
    return TransformersGenerator(model, tokenizer, batch_size=8), tokenizer


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_budget_forcing_closes_with_the_pairs_delimiter_and_the_answer_cue(thinking):
    generator, tokenizer = thinking
    settings = DecodingSettings(do_sample=False, max_new_tokens=120, think_budget=6)
    close = "\n</think>\n\nFinal Answer:"  # the delimiter on its own line, then s1's cue
    for forced in generator.generate(CONVERSATIONS, settings):
        thought, _, answer = forced.text.partition(close)
        assert answer, forced.text  # the cue follows the cut thought
        assert len(_ids(tokenizer, thought)) == 6  # thinks long: cut at the budget
        assert "Considering the limited time" not in forced.text  # not Qwen3's sentence
        # Inserted tokens are counted in n_tokens and stored apart.
        assert forced.n_inserted == len(_ids(tokenizer, close))
        assert forced.n_tokens == len(_ids(tokenizer, forced.text)) + forced.finished


def test_budget_waits_suppress_the_end_of_thinking(thinking):
    generator, tokenizer = thinking
    plain = generator.generate(CONVERSATIONS, DecodingSettings(do_sample=False, max_new_tokens=200))
    waits = DecodingSettings(do_sample=False, max_new_tokens=400, think_budget=300, think_waits=1)
    for extended, full in zip(generator.generate(CONVERSATIONS, waits), plain, strict=True):
        own = full.text.split("</think>")[0]
        assert len(_ids(tokenizer, own)) < 300  # the model ends its thinking inside the budget
        # ... and its first end of thinking is replaced by "Wait": it thinks on.
        assert extended.text.startswith(own + "Wait")
        assert extended.n_inserted >= len(_ids(tokenizer, "Wait"))
        assert extended.n_tokens == len(_ids(tokenizer, extended.text)) + extended.finished
    with pytest.raises(UserError, match="give --budgets"):
        DecodingSettings(think_waits=1)


def _opening_pair(tmp_path: Path) -> tuple[Path, Path]:
    """The embedded pair with a thinking template that opens ``<think>`` in the generation
    prompt, as Qwen3-4B-Thinking-2507's does."""
    thinking = tmp_path / "thinking"
    shutil.copytree(PAIR / "thinking", thinking)
    template = (thinking / "chat_template.jinja").read_text()
    opened = template.replace("'<|im_start|>assistant\\n'", "'<|im_start|>assistant\\n<think>\\n'")
    assert opened != template
    (thinking / "chat_template.jinja").write_text(opened)
    return PAIR / "direct", thinking


def test_no_thinking_prefill_fits_a_template_that_opens_think(tmp_path):
    _, thinking = _opening_pair(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(thinking)
    settings = DecodingSettings(no_thinking=True)
    for prompt in chat_prompts(tokenizer, CONVERSATIONS, settings):
        assert prompt.endswith(
            "<|im_start|>assistant\n<think>\nOkay, I think I have finished thinking.\n</think>\n\n"
        )
        assert prompt.count("<think>") == 1


def test_changed_baselines_get_configuration_ids_of_their_own():
    # Rows of the earlier protocols (an empty NoThinking block, Qwen3's sentence at the
    # budget) must not pass for the new ones when a sweep resumes: the settings differ.
    assert DecodingSettings(no_thinking=True).as_dict()["no_thinking_text"] == (
        "Okay, I think I have finished thinking."
    )
    forced = DecodingSettings(think_budget=8).as_dict()
    assert forced["think_end"] is None and forced["answer_cue"] == "Final Answer:"
    assert forced["think_waits"] == 0


def _template_sweep(db: Path, direct: Path, thinking: Path, *extra: str) -> pd.DataFrame:
    args = ["sweep", "--direct", str(direct), "--thinking", str(thinking), "--methods", "linear"]
    args += ["--lam", "0,0.5,1", "--bench", "synthetic", "--levels", "4", "--limit", "2"]
    args += ["--greedy", "--max-new-tokens", "60", "--db", str(db), "--no-progress", *extra]
    assert main(args) == 0
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(
            "SELECT method, lam, template, problem_id, response, config_id FROM samples "
            "ORDER BY method, lam, problem_id"
        ).df()


def test_merges_run_with_the_template_their_export_carries(tmp_path):
    direct, thinking = _opening_pair(tmp_path)
    rows = _template_sweep(tmp_path / "a.duckdb", direct, thinking, "--no-thinking")
    roles = {(m, lam): set(g["template"]) for (m, lam), g in rows.groupby(["method", "lam"])}
    assert roles == {
        ("linear", 0.0): {"direct"}, ("linear", 0.5): {"thinking"},
        ("linear", 1.0): {"thinking"}, ("no_thinking", 1.0): {"thinking"},
    }  # fmt: skip
    # λ = 1 is the thinking model as its authors run it: the template opened <think>, so
    # the response does not; exactly what the thinking checkpoint answers on its own.
    generator = TransformersGenerator(
        AutoModelForCausalLM.from_pretrained(thinking).eval(),
        AutoTokenizer.from_pretrained(thinking),
    )
    problems = synthetic.make_problems(4, 2, seed=0)
    own = generator.generate(
        [list(p.messages) for p in problems], DecodingSettings(do_sample=False, max_new_tokens=60)
    )
    at_one = rows[(rows["method"] == "linear") & (rows["lam"] == 1.0)]
    assert list(at_one["response"]) == [g.text for g in own]
    assert not any(text.startswith("<think>") for text in at_one["response"])
    # --template direct: the same merges with the direct parent's template, other rows.
    other = _template_sweep(tmp_path / "b.duckdb", direct, thinking, "--template", "direct")
    assert set(other["template"]) == {"direct"}
    with duckdb.connect(str(tmp_path / "b.duckdb"), read_only=True) as con:
        labels = set(summaries(con)["label"])
    assert labels == {
        "linear λ=0",
        "linear λ=0.5 [direct template]",
        "linear λ=1 [direct template]",
    }
    moved = other[(other["lam"] == 1.0)]
    assert all(text.startswith("<think>") for text in moved["response"])  # it opens it itself
    assert not set(moved["config_id"]) & set(at_one["config_id"])
    # A pair with one template keeps its configuration ids: the template is "shared".
    same = _template_sweep(tmp_path / "c.duckdb", PAIR / "direct", PAIR / "thinking")
    assert set(same["template"]) == {"shared"}


def test_a_schema_2_database_gains_the_new_columns(tmp_path):
    path = tmp_path / "old.duckdb"
    with store.opened(path) as con:  # a file as schema 2 wrote it, with one row
        con.execute("ALTER TABLE samples DROP COLUMN template")
        con.execute("ALTER TABLE samples DROP COLUMN n_inserted")
        con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
        store.insert_frame(
            con, "samples", pd.DataFrame(_rows("linear", 1.0, bool, lambda i: 7)[:1])
        )
    with duckdb.connect(str(path), read_only=True) as con:  # read as it is: no new columns
        table = summaries(con)
    assert table["template"].isna().all() and table["kind"].tolist() == ["parent"]
    with store.opened(path) as con:  # opened for writing: migrated, old rows kept
        assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            "3",
        )
        assert con.execute("SELECT n_inserted, template FROM samples").fetchall() == [(0, None)]


# --- Selection apart from evaluation ----------------------------------------------------


def test_confirm_reevaluates_on_fresh_problems_with_the_parents(tmp_path, capsys):
    db = tmp_path / "sweep.duckdb"
    args = ["sweep", "--direct", str(PAIR / "direct"), "--thinking", str(PAIR / "thinking")]
    args += ["--methods", "linear", "--lam", "0,0.5,1", "--bench", "synthetic", "--levels"]
    args += ["4", "--limit", "3", "--greedy", "--max-new-tokens", "70", "--db", str(db)]
    assert main([*args, "--no-progress"]) == 0
    with duckdb.connect(str(db), read_only=True) as con:
        before = summaries(con)[["config_id", "mean", "tokens"]]
        swept = {p for (p,) in con.execute("SELECT DISTINCT problem_id FROM samples").fetchall()}
    assert main(["confirm", "--db", str(db), "--config", "linear@0.5", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "confirmation of linear λ=0.5 on 3 fresh problems (data seed 1, k=1)" in printed
    with duckdb.connect(str(db), read_only=True) as con:
        stored = con.execute("SELECT * FROM confirmations").df()
        after = summaries(con)[["config_id", "mean", "tokens"]]
        row = stored.iloc[0]
        ids = [row["config_id"], row["direct_config_id"], row["thinking_config_id"]]
        fresh = con.execute(
            "SELECT config_id, avg(correct::INTEGER), avg(n_tokens), "
            "list(DISTINCT problem_id) FROM samples WHERE list_contains(?, config_id) "
            "GROUP BY config_id",
            [ids],
        ).fetchall()
    # The parents and the configuration ran on the same fresh problems, none of them swept.
    assert len(stored) == 1 and len(fresh) == 3
    problems = [sorted(p) for _, _, _, p in fresh]
    assert problems[0] == problems[1] == problems[2] and not set(problems[0]) & swept
    # The sweep's own tables are what they were: a confirmation is not one more row.
    pd.testing.assert_frame_equal(before.reset_index(drop=True), after.reset_index(drop=True))
    # Its numbers, recomputed from the stored samples with SQL.
    result = json.loads(row["result"])
    by_id = {cid: (acc, tokens) for cid, acc, tokens, _ in fresh}
    assert result["mean"] == pytest.approx(by_id[row["config_id"]][0])
    assert result["thinking"]["mean"] == pytest.approx(by_id[row["thinking_config_id"]][0])
    expected = by_id[row["config_id"]][1] - by_id[row["thinking_config_id"]][1]
    assert result["thinking"]["tokens_diff"] == pytest.approx(expected)
    # The report states it, confirmed only where the paired test holds on fresh problems.
    assert main(["report", "--db", str(db), "--json"]) == 0
    statements = json.loads(capsys.readouterr().out)
    confirmations = [s for s in statements if s["kind"] == "confirmation"]
    assert len(confirmations) == 2 and {s["parent"] for s in confirmations} == {
        "direct", "thinking"
    }  # fmt: skip
    for statement in confirmations:
        assert statement["confirmed"] == (statement["numbers"]["verdict"] == "improvement")
    improvements_stated = [s for s in statements if s["kind"] == "improvement"]
    assert all(s["selected_in_sample"] for s in improvements_stated)
    # Bad input: one line each, nothing written.
    assert main(["confirm", "--db", str(db), "--config", "linear"]) == 2
    assert main(["confirm", "--db", str(db), "--config", "ties@0.5"]) == 2
    assert main(["confirm", "--db", str(db), "--config", "linear@0.5", "--data-seed", "0"]) == 2
    errors = capsys.readouterr().err
    assert "METHOD@λ" in errors and "no sweep of ties" in errors and "the sweep's own" in errors
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM confirmations").fetchone() == (1,)
