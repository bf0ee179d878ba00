"""Checkpoint rows: another model (the pair's intermediate checkpoint `thinking_concise`)
swept as itself beside the merges, and on the same paired test as the baselines."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spectrum.cli import main
from spectrum.errors import UserError
from spectrum.eval import results, store
from spectrum.eval.benchmarks import load_problems
from spectrum.eval.metrics import compare
from spectrum.eval.report import report_statements
from spectrum.eval.sweep import SweepSpec, run_sweep

ROOT = Path(__file__).resolve().parents[1]
PAIR = ROOT / "assets" / "pair"
CONCISE = str(PAIR / "thinking_concise")
MAX_NEW = 48


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _spec(**overrides) -> SweepSpec:
    settings = dict(
        direct=str(PAIR / "direct"),
        thinking=str(PAIR / "thinking"),
        methods=("linear",),
        lams=(0.0, 0.6, 0.9, 1.0),
        limit=2,
        levels=(1, 2),
        decoding=dict(max_new_tokens=MAX_NEW, do_sample=False),
        batch_size=4,
        # The thinking parent's own weights as a second checkpoint: a merge beats it.
        checkpoints={"concise": CONCISE, "verbose": str(PAIR / "thinking")},
    )
    return SweepSpec(**{**settings, **overrides})


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("checkpoint") / "r.duckdb"
    done = run_sweep(_spec(), path, progress=False)
    assert done.generated == 6 * 4  # 4 λ + 2 checkpoints, 4 problems
    return path


def _samples(db: Path, where: str = "TRUE"):
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute(f"SELECT * FROM samples WHERE {where} ORDER BY problem_id").df()
    con.close()
    return rows


def test_the_checkpoint_runs_as_itself(db):
    rows = _samples(db, "method = 'checkpoint' AND params->>'name' = 'concise'")
    assert len(rows) == 4 and rows["config_id"].nunique() == 1
    assert (rows["lam"] == 1.0).all() and (rows["template"] == "checkpoint").all()
    assert {json.loads(p)["name"] for p in rows["params"]} == {"concise"}
    # Independently: the checkpoint alone, greedy, with its own chat template.
    tokenizer = AutoTokenizer.from_pretrained(CONCISE)
    model = AutoModelForCausalLM.from_pretrained(CONCISE).eval()
    problems = {p.id: p for p in load_problems("synthetic", limit=2, levels=(1, 2))}
    for _, row in rows.iterrows():
        prompt = tokenizer.apply_chat_template(
            problems[row["problem_id"]].conversation(), tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, do_sample=False, max_new_tokens=MAX_NEW,
                                 eos_token_id=2, pad_token_id=0)  # fmt: skip
        text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        assert row["response"] == text
    # The concise checkpoint thinks, and more briefly than the thinking parent.
    thinking = _samples(db, "method = 'linear' AND lam = 1")
    assert rows["thinks"].all() and rows["n_tokens"].mean() < thinking["n_tokens"].mean()


def test_a_rerun_skips_it_and_other_weights_get_another_id(db, tmp_path):
    again = run_sweep(_spec(), db, progress=False)
    assert again.generated == 0 and again.skipped == 24
    other = tmp_path / "o.duckdb"
    run_sweep(_spec(lams=(1.0,), checkpoints={"concise": str(PAIR / "thinking")}), other,
              progress=False)  # fmt: skip
    first = _samples(db, "method = 'checkpoint' AND params->>'name' = 'concise'")
    first = first["config_id"].iloc[0]
    second = _samples(other, "method = 'checkpoint'")
    assert second["config_id"].iloc[0] != first
    # The same weights as the thinking parent give the thinking parent's answers.
    parent = _samples(other, "method = 'linear'")
    assert second["response"].tolist() == parent["response"].tolist()


def test_its_kind_label_and_place_in_the_tables(db):
    with store.opened(db, read_only=True) as con:
        table = results.summaries(con)
    rows = table[table["method"] == "checkpoint"]
    assert set(rows["kind"]) == {"checkpoint"}
    assert set(rows["label"]) == {"checkpoint concise", "checkpoint verbose"}
    assert "checkpoint" not in set(results.plain_merges(table)["method"])
    found = results.parents(table, "synthetic")
    assert {r["method"] for r in found.values()} == {"linear"}
    assert all(r["kind"] == "parent" for r in found.values())


def test_merges_are_compared_with_it_by_the_paired_test(db):
    with store.opened(db, read_only=True) as con:
        table = results.summaries(con)
    versus = results.merges_vs_checkpoints(table).set_index("checkpoint")
    assert set(versus.index) == {"concise", "verbose"}
    samples = _samples(db)
    compared = 0
    for name, entry in versus.iterrows():
        checkpoint = table[table["label"] == f"checkpoint {name}"].iloc[0]
        assert entry["checkpoint_mean"] == checkpoint["mean"]
        # Which merges look better, recomputed from the stored samples: fewer tokens on
        # the paired problems and no accuracy lost.
        mine = samples[samples["config_id"] == checkpoint["config_id"]].set_index("problem_id")
        looks = []
        for _, merge in results.merges(table).iterrows():
            theirs = samples[samples["config_id"] == merge["config_id"]].set_index("problem_id")
            acc = (theirs["correct"].astype(float) - mine["correct"].astype(float)).mean()
            tokens = (theirs["n_tokens"] - mine["n_tokens"]).mean()
            if tokens < 0 and acc >= 0:
                looks.append((merge, acc, tokens))
        if not looks:
            assert pd.isna(entry["merge"])  # None reads back NaN in a frame
            continue
        merge, acc, tokens = next(t for t in looks if t[0]["label"] == entry["merge"])
        assert entry["acc_diff"] == pytest.approx(acc)
        assert entry["tokens_diff"] == pytest.approx(tokens)
        expected = compare(*merge["problems"].paired(checkpoint["problems"]))
        assert entry["verdict"] == expected.verdict
        compared += 1
    assert compared == 1  # the verbose one: linear λ=0.9 is as accurate and shorter


def test_report_states_it(db, tmp_path):
    statements = report_statements(db)
    kinds = {s["kind"] for s in statements}
    assert {"checkpoint", "merge_vs_checkpoint"} <= kinds
    own = {s["configuration"]: s for s in statements if s["kind"] == "checkpoint"}
    assert own["checkpoint concise"]["text"].startswith("synthetic: checkpoint concise accuracy")
    assert own["checkpoint concise"]["interval"] == "wilson"
    versus = {s["checkpoint"]: s for s in statements if s["kind"] == "merge_vs_checkpoint"}
    assert "no merge beats it" in versus["concise"]["text"]
    assert "linear λ=0.9" in versus["verbose"]["text"] and "Δaccuracy" in versus["verbose"]["text"]
    # The checkpoint is never counted as a parent.
    parents = [s for s in statements if s["kind"] == "parent"]
    assert len(parents) == 2 and all("checkpoint" not in s["text"] for s in parents)
    out = tmp_path / "report.html"
    assert main(["report", "--db", str(db), "--out", str(out)]) == 0
    assert "checkpoint concise" in out.read_text(encoding="utf-8")


def test_confirm_leaves_checkpoints_out(db, tmp_path):
    import shutil

    copy = tmp_path / "c.duckdb"
    shutil.copy(db, copy)
    assert main(["confirm", "--db", str(copy), "--config", "linear@0.9", "--limit", "1"]) == 0
    rows = _samples(copy, "method = 'checkpoint'")
    assert len(rows) == 8  # only the sweep's own


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--checkpoint", "concise"], "expected KEY=VALUE"),
        (["--checkpoint", f"a={CONCISE}", "--checkpoint", f"a={CONCISE}"], "names 'a' twice"),
        (["--checkpoint", f"a b={CONCISE}"], "checkpoint name 'a b'"),
        (["--checkpoint", "a="], "give its folder"),
        (["--checkpoint", "a=/no/such/model"], "/no/such/model"),
        (["--checkpoint", f"a={CONCISE}", "--backend", "vllm"], "transformers backend"),
        (["--checkpoint", f"a={CONCISE}", "--ray", "local"], "not on a Ray pool"),
    ],
)
def test_bad_checkpoints_are_refused_before_any_write(tmp_path, capsys, flags, message):
    db = tmp_path / "never.duckdb"
    args = [
        "sweep", "--direct", str(PAIR / "direct"), "--thinking", str(PAIR / "thinking"),
        "--lam", "0,1", "--limit", "1", "--db", str(db), "--no-progress", *flags,
    ]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not db.exists()


def test_a_bad_name_is_refused_by_the_library_too():
    from spectrum.eval.sweep import SweepLimits, check_spec

    with pytest.raises(UserError, match="checkpoint name"):
        check_spec(_spec(checkpoints={"../x": CONCISE}), SweepLimits())
