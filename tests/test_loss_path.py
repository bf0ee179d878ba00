"""`spectrum analyze --loss-path`: NLL along the linear path, every λ in one batch, checked
against merges materialised with plain torch; the table, the report and bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from spectrum.cli import main
from spectrum.eval.benchmarks import load_problems
from spectrum.eval.loss_path import (
    Scored,
    document_sequences,
    parent_answers,
    per_source,
    read_documents,
    ridge_sentence,
    ridges,
    token_nll,
)
from spectrum.eval.sweep import chat_template_of
from spectrum.live.spectrum_model import SpectrumModel

ROOT = Path(__file__).resolve().parents[1]
PAIR = ROOT / "assets" / "pair"
DIRECT, THINKING = str(PAIR / "direct"), str(PAIR / "thinking")
LAMS = [0.0, 0.3, 0.55, 1.0]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    """Held-out reference solutions after their prompts (JSON lines)."""
    path = tmp_path_factory.mktemp("text") / "heldout.jsonl"
    assert main(["toy", "text", "--out", str(path), "--n", "1", "--seed", "3"]) == 0
    return path


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    """The same transcripts as plain text: every token after the first scored."""
    path = tmp_path_factory.mktemp("text") / "heldout.txt"
    assert main(["toy", "text", "--out", str(path), "--n", "1", "--seed", "3"]) == 0
    return path


@pytest.fixture(scope="module")
def spectrum():
    return SpectrumModel.load(DIRECT, THINKING, method="linear", device="cpu")


@pytest.fixture(scope="module")
def sequences(spectrum, text, plain) -> list[Scored]:
    docs = document_sequences(spectrum.tokenizer, read_documents(text), 256)
    # Only the solutions count after their prompts; in the plain file, every token but one.
    assert all(s.start > 1 for s in docs)
    docs += document_sequences(spectrum.tokenizer, read_documents(plain)[:2], 256)
    assert [s.start for s in docs[-2:]] == [1, 1]
    problems = load_problems("synthetic", limit=1, seed=0, levels=(1, 3))
    templates = {"direct": chat_template_of(DIRECT), "thinking": chat_template_of(THINKING)}
    answers = parent_answers(spectrum, [p.conversation() for p in problems], templates, 64)
    return docs + answers


def _merged(lam: float):
    """θ(λ) = (1−λ)·θ_D + λ·θ_T built with plain torch into a fresh transformers model."""
    direct = load_file(PAIR / "direct" / "model.safetensors")
    thinking = load_file(PAIR / "thinking" / "model.safetensors")
    model = AutoModelForCausalLM.from_pretrained(PAIR / "direct")
    merged = {name: (1 - lam) * direct[name] + lam * thinking[name] for name in direct}
    missing, unexpected = model.load_state_dict(merged, strict=False)
    assert not unexpected and all("rotary" in name for name in missing)
    return model.eval()


def _mean_nll(model, scored: Scored) -> float:
    """Mean NLL of the scored tokens, one unpadded sequence at a time."""
    ids = torch.tensor([scored.ids])
    with torch.no_grad():
        logits = model(ids).logits[0].double()
    logp = torch.log_softmax(logits[:-1], dim=-1)
    nll = -logp[torch.arange(len(scored.ids) - 1), ids[0, 1:]]
    return float(nll[scored.start - 1 :].mean())


def test_every_lam_in_one_batch_matches_the_materialised_merge(spectrum, sequences):
    sources = {s.source for s in sequences}
    assert sources == {"text", "direct_answers", "thinking_answers"}
    got = token_nll(spectrum, sequences, LAMS, batch_size=len(sequences), progress=False)
    assert len(got) == len(sequences) * len(LAMS)  # one batch: every sequence at every λ
    for lam in LAMS:
        model = _merged(lam)
        for index, scored in enumerate(sequences):
            row = got[(got["sequence"] == index) & (got["lam"] == lam)].iloc[0]
            assert row["n_tokens"] == len(scored.ids) - scored.start
            expected = _mean_nll(model, scored)
            assert abs(row["nll_sum"] / row["n_tokens"] - expected) < 1e-4, (lam, index)
    # Per source: every token weighs the same (Σ NLL / Σ tokens).
    table = per_source(got)
    for (source, lam), rows in got.groupby(["source", "lam"]):
        mine = table[(table["source"] == source) & (table["lam"] == lam)].iloc[0]
        assert mine["nll"] == pytest.approx(rows["nll_sum"].sum() / rows["n_tokens"].sum())
        assert mine["n_sequences"] == len(rows)


def test_the_answers_are_each_parents_own_greedy_answers(sequences):
    """Generated again by each parent alone, unpadded, with its own chat template."""
    for role, path in (("direct", DIRECT), ("thinking", THINKING)):
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        mine = [s for s in sequences if s.source == f"{role}_answers"]
        assert len(mine) == 2
        for scored in mine:
            prompt = torch.tensor([scored.ids[: scored.start]])
            with torch.no_grad():
                out = model.generate(prompt, do_sample=False, max_new_tokens=64,
                                     eos_token_id=2, pad_token_id=0)  # fmt: skip
            answer = out[0, scored.start :].tolist()
            answer = answer[: answer.index(2) + 1] if 2 in answer else answer
            assert list(scored.ids[scored.start :]) == answer
    thinks = [s for s in sequences if s.source == "thinking_answers"]
    assert all(len(s.ids) - s.start > 10 for s in thinks)  # traces, not bare answers


def test_ridge_is_the_highest_interior_minus_the_worse_end():
    frame = pd.DataFrame(
        dict(
            source=["text"] * 3 + ["direct_answers"] * 3 + ["thinking_answers"] * 2,
            lam=[0.0, 0.5, 1.0, 0.0, 0.4, 1.0, 0.0, 1.0],
            nll=[1.0, 3.0, 2.0, 2.0, 1.5, 1.0, 0.5, 0.7],
        )
    )
    found = ridges(frame).set_index("source")
    assert found.loc["text", "ridge"] == pytest.approx(1.0)
    assert found.loc["text", "lam_at_max"] == 0.5
    assert found.loc["direct_answers", "ridge"] == pytest.approx(-0.5)
    assert math.isnan(found.loc["thinking_answers", "ridge"])
    row = found.reset_index().set_index("source", drop=False)
    text = ridge_sentence(row.loc["text"])
    assert ": a high-loss ridge" in text and "+1.000" in text and "λ=0.5" in text
    assert "no high-loss ridge" in ridge_sentence(row.loc["direct_answers"])
    assert "needs λ=0, λ=1 and a λ in between" in ridge_sentence(row.loc["thinking_answers"])


def test_documents_are_separated_by_blank_lines(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a b\nc\n\n\n  \nd\n\ne", encoding="utf-8")
    assert [d.text for d in read_documents(path)] == ["a b\nc", "d", "e"]
    assert {d.prompt for d in read_documents(path)} == {""}
    lines = tmp_path / "t.jsonl"
    lines.write_text('{"prompt": "p", "text": "t"}\n\n{"text": "u"}\n', encoding="utf-8")
    assert [(d.prompt, d.text) for d in read_documents(lines)] == [("p", "t"), ("", "u")]


def test_toy_text_is_held_out_and_reproducible(tmp_path):
    from spectrum.eval.benchmarks.synthetic import split_of

    out = tmp_path / "t.jsonl"
    assert main(["toy", "text", "--out", str(out), "--n", "2", "--seed", "5"]) == 0
    first = out.read_text(encoding="utf-8")
    assert main(["toy", "text", "--out", str(out), "--n", "2", "--seed", "5"]) == 2
    assert main(["toy", "text", "--out", str(out), "--n", "2", "--seed", "5", "--force"]) == 0
    assert out.read_text(encoding="utf-8") == first
    documents = read_documents(out)
    assert len(documents) == 10
    for document in documents:
        question = document.prompt.split("<|im_start|>user\n")[1].split("\n")[0]
        assert split_of(question) == "test"
        assert document.prompt.endswith("<|im_start|>assistant\n")
        assert document.text.endswith("<|im_end|>") and "\\boxed{" in document.text
    plain = tmp_path / "t.txt"
    assert main(["toy", "text", "--out", str(plain), "--n", "2", "--seed", "5"]) == 0
    assert [d.text for d in read_documents(plain)] == [d.prompt + d.text for d in documents]
    assert main(["toy", "text", "--out", str(tmp_path), "--n", "2"]) == 2


def _tiny_sweep(db: Path) -> None:
    assert main([
        "sweep", "--direct", DIRECT, "--thinking", THINKING, "--methods", "linear",
        "--lam", "0,0.5,1", "--limit", "1", "--levels", "1", "--greedy", "--max-new-tokens",
        "40", "--db", str(db), "--no-progress",
    ]) == 0  # fmt: skip


def _loss_path_args(text: Path, db: Path) -> list[str]:
    return [
        "analyze", "--direct", DIRECT, "--thinking", THINKING, "--loss-path", "--text",
        str(text), "--lam", "0,0.5,1", "--problems", "1", "--max-new-tokens", "48", "--db",
        str(db), "--no-progress",
    ]  # fmt: skip


def test_cli_prints_stores_once_and_reports(text, tmp_path, capsys):
    db = tmp_path / "r.duckdb"
    _tiny_sweep(db)
    capsys.readouterr()
    assert main(_loss_path_args(text, db)) == 0
    printed = capsys.readouterr().out
    assert "mean per-token NLL" in printed and "ridge" in printed
    assert main(_loss_path_args(text, db)) == 0  # the same path again replaces its rows
    assert capsys.readouterr().out == printed  # and prints the same numbers
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT * FROM loss_path ORDER BY source, lam").df()
    con.close()
    assert len(rows) == 9 and rows["path_id"].nunique() == 1
    assert set(rows["source"]) == {"text", "direct_answers", "thinking_answers"}
    # The printed table is the stored one.
    for _, row in rows[rows["source"] == "text"].iterrows():
        assert f"{row['nll']:.4f}" in printed
    assert main(["report", "--db", str(db), "--json"]) == 0
    statements = json.loads(capsys.readouterr().out)
    ridge = [s for s in statements if s["kind"] == "loss_ridge"]
    assert len(ridge) == 3
    by_source = {s["source"]: s for s in ridge}
    expected = ridges(rows).set_index("source")["ridge"]
    for source, statement in by_source.items():
        assert statement["numbers"]["ridge"] == pytest.approx(expected[source])
        assert statement["holds"] == (expected[source] <= 0)
    out = tmp_path / "report.html"
    assert main(["report", "--db", str(db), "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert "loss along the path (mode connectivity)" in page
    assert "the thinking parent&#x27;s answers" in page or "thinking parent's answers" in page


def test_two_processes_store_the_same_path_at_once(text, tmp_path, spectrum, sequences):
    """Two writers of one path into one DB: both succeed, one copy of the rows remains."""
    from spectrum.eval.loss_path import COLUMNS

    frame = per_source(token_nll(spectrum, sequences, [0.0, 1.0], progress=False))
    frame = frame.assign(**{c: None for c in COLUMNS if c not in frame.columns})
    frame = frame.assign(path_id="p1", created_at=pd.Timestamp("2026-01-01"))[COLUMNS]
    frame.to_pickle(tmp_path / "frame.pkl")
    db = tmp_path / "shared.duckdb"
    code = (
        "import sys, pandas as pd\n"
        "from spectrum.eval import store\n"
        "from spectrum.eval.loss_path import LossPath, store_loss_path\n"
        "frame = pd.read_pickle(sys.argv[1])\n"
        "with store.opened(sys.argv[2]) as con:\n"
        "    store_loss_path(con, LossPath('p1', frame))\n"
    )
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path / "frame.pkl"), str(db)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM loss_path").fetchone()[0] == len(frame)
    con.close()


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        (None, ["--no-text"], "--loss-path needs --text"),
        ("", [], "holds no document"),
        ("12 + 3 é\n", [], "does not know: 'é'"),
        ("1" * 300 + "\n", [], "over the model's 256 positions"),
        ("7\n", [], "no token to score"),
        ("12 + 3\n", ["--lam", "0:2:0.5"], "λ"),
        ("12 + 3\n", ["--problems", "0"], "at least 1"),
        ("{not json\n", ["--jsonl"], "line 1 is not JSON"),
        ('{"prompt": "12"}\n', ["--jsonl"], 'needs a string "text"'),
        ('{"prompt": 3, "text": "4"}\n', ["--jsonl"], '"prompt" must be a string'),
        ('{"prompt": "12 + 3", "text": ""}\n', ["--jsonl"], "no token to score"),
        (b"\xff\xfe", [], "is not UTF-8"),
    ],
)
def test_bad_input_is_one_line_before_any_write(tmp_path, capsys, content, extra, message):
    db = tmp_path / "never.duckdb"
    args = ["analyze", "--direct", DIRECT, "--thinking", THINKING, "--loss-path", "--db", str(db)]
    if extra != ["--no-text"]:
        text = tmp_path / ("t.jsonl" if extra == ["--jsonl"] else "t.txt")
        extra = [] if extra == ["--jsonl"] else extra
        if isinstance(content, bytes):
            text.write_bytes(content)
        else:
            text.write_text(content, encoding="utf-8")
        args += ["--text", str(text), *extra]
    assert main([*args, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not db.exists()


def test_text_without_loss_path_is_refused(tmp_path, capsys):
    assert main(["analyze", "--direct", DIRECT, "--thinking", THINKING, "--text", "x"]) == 2
    assert "add --loss-path" in capsys.readouterr().err
