"""spectrum.dashboard.service: three columns, truthful merge labels under races, votes, export,
allowed folders — on a real tiny pair, checked against merges computed here."""

from __future__ import annotations

import itertools
import json
import shutil
import threading
import time
import zipfile

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from spectrum.dashboard import service
from spectrum.dashboard.service import (
    DEFAULT_PAIR,
    AllowedFolders,
    Dashboard,
    Turn,
    blind_order,
    conversation_for,
    decoding_for,
)
from spectrum.dashboard.votes import COLUMNS, read_votes
from spectrum.errors import UserError
from spectrum.merge import MergeSpec, merge_tensors
from spectrum.toy.tiny import save_tiny_pair

TOKENS = 60
GREEDY = {
    column: decoding_for(column, "greedy", TOKENS) for column in ("direct", "merged", "thinking")
}
PROMPT = "37 + 5 - 8"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    # Parents far enough apart that different λ give different greedy text.
    return save_tiny_pair(tmp_path_factory.mktemp("distinct_pair"), seed=5, noise=0.6)


@pytest.fixture(scope="module")
def dashboard(pair, tmp_path_factory):
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("dashboard")
    return Dashboard(pair["direct"], pair["thinking"], device="cpu", db=folder / "votes.duckdb")


def weights(path) -> dict[str, torch.Tensor]:
    tensors = {}
    for shard in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def reference_reply(pair, lam: float, method: str = "linear") -> str:
    """Greedy reply of (1−λ)·direct + λ·thinking, merged here by the formula itself (other
    methods: by the offline engine, a code path apart from the dashboard's)."""
    direct, thinking = weights(pair["direct"]), weights(pair["thinking"])
    merged = {name: (1 - lam) * direct[name] + lam * thinking[name] for name in direct}
    if method != "linear":
        merged = merge_tensors(direct, thinking, method=method, lam=lam)
    model = AutoModelForCausalLM.from_pretrained(pair["direct"], dtype=torch.float32).eval()
    model.load_state_dict(merged, strict=False)
    tokenizer = AutoTokenizer.from_pretrained(pair["direct"])
    conversation = [{"role": "user", "content": PROMPT}]
    prompt = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**encoded, max_new_tokens=TOKENS, do_sample=False)
    new = out[0, encoded["input_ids"].shape[1] :]
    return tokenizer.decode(new[new != tokenizer.eos_token_id], skip_special_tokens=True)


def final(dashboard, request, turns=()):
    return list(dashboard.chat(list(turns), PROMPT, request, GREEDY))[-1]


def test_three_columns_answer_from_their_own_models(dashboard, pair):
    replies = final(dashboard, MergeSpec("linear", 0.5))
    assert replies["direct"].update.text == reference_reply(pair, 0.0)
    assert replies["thinking"].update.text == reference_reply(pair, 1.0)
    assert replies["merged"].update.text == reference_reply(pair, 0.5)
    assert (replies["merged"].merge.spec.method, replies["merged"].merge.spec.lam) == (
        "linear",
        0.5,
    )
    assert replies["direct"].merge is None and replies["thinking"].merge is None
    for reply in replies.values():
        assert reply.update.finished and reply.update.n_tokens > 0


def test_slider_release_mid_stream_never_mislabels_the_merged_answer(dashboard, pair):
    # slerp is not affine: the live merger serves it, re-merging one shared model.
    first, second = 0.2, 0.9
    assert reference_reply(pair, first, "slerp") != reference_reply(pair, second, "slerp")
    dashboard.set_merge(MergeSpec("slerp", first))
    released = []

    def release_slider() -> None:
        released.append(dashboard.set_merge(MergeSpec("slerp", second)))
        released.append(time.perf_counter())

    release = threading.Thread(target=release_slider)
    snapshot, streamed_until = None, None
    for snapshot in dashboard.chat([], PROMPT, MergeSpec("slerp", first), GREEDY):
        if snapshot["merged"] is not None and release.ident is None:
            release.start()  # the merged column is streaming: release the slider now
        if snapshot["merged"] is not None and snapshot["merged"].update.finished:
            # The parents' columns (a spectrum model) may stream on after the merged one.
            streamed_until = streamed_until or time.perf_counter()
    release.join()
    merged = snapshot["merged"]
    assert release.ident is not None and merged.update.finished
    # Labelled with the merge it ran on, and that merge is exactly what produced it.
    assert merged.merge.spec.lam == first
    assert merged.update.text == reference_reply(pair, first, "slerp")
    # The release waited for the generation to end, then loaded its own λ.
    loaded, loaded_at = released
    assert loaded.spec.lam == second and loaded.version > merged.merge.version
    assert loaded_at >= streamed_until - 0.5  # not before the merged column was done
    assert dashboard.merger.current.spec.lam == second


def test_a_page_gets_its_own_lam_back_after_another_page_remerged(dashboard, pair):
    dashboard.set_merge(MergeSpec("slerp", 0.9))  # "another page"
    replies = final(dashboard, MergeSpec("slerp", 0.3))
    assert replies["merged"].merge.spec.lam == 0.3
    assert replies["merged"].update.text == reference_reply(pair, 0.3, "slerp")


def test_linear_merges_come_from_the_spectrum_model_without_a_live_merger(pair, tmp_path):
    board = Dashboard(pair["direct"], pair["thinking"], device="cpu", db=tmp_path / "v.duckdb")
    spec = MergeSpec("linear", 0.6, modules=("attn", "mlp"))
    assert board.served_by(spec).startswith("spectrum model")
    assert board.served_by(MergeSpec("slerp", 0.6)).startswith("live merger")
    assert board.set_merge(spec).spec == spec.checked()
    replies = final(board, MergeSpec("linear", 0.7))
    assert replies["merged"].update.text == reference_reply(pair, 0.7)
    assert replies["direct"].update.text == reference_reply(pair, 0.0)
    assert replies["thinking"].update.text == reference_reply(pair, 1.0)
    assert board._merger is None  # no third model, no prepared tensors


def test_two_pages_chatting_at_once_each_get_truthful_labels(dashboard, pair):
    results = {}

    def page(lam: float) -> None:
        results[lam] = final(dashboard, MergeSpec("linear", lam))["merged"]

    pages = [threading.Thread(target=page, args=(lam,)) for lam in (0.1, 0.7)]
    for thread in pages:
        thread.start()
    for thread in pages:
        thread.join()
    for reply in results.values():
        assert reply.update.text == reference_reply(pair, reply.merge.spec.lam)


def test_multi_turn_history_is_each_columns_own(dashboard):
    first = final(dashboard, MergeSpec("linear", 0.5))
    turns = [Turn(PROMPT, first)]
    for column in ("direct", "merged", "thinking"):
        conversation = conversation_for(turns, column, "and again?")
        assert conversation[1] == {"role": "assistant", "content": first[column].update.text}
        assert conversation[-1] == {"role": "user", "content": "and again?"}
    second = list(dashboard.chat(turns, "and again?", MergeSpec("linear", 0.5), GREEDY))
    assert all(reply.update.finished for reply in second[-1].values())


def test_vote_stores_the_merge_that_answered(dashboard):
    replies = final(dashboard, MergeSpec("linear", 0.4))
    dashboard.vote([Turn(PROMPT, replies)], "merged", GREEDY)
    row = read_votes(dashboard.db)[-1]
    assert (row["choice"], row["method"], row["lam"]) == ("merged", "linear", 0.4)
    assert row["merged_answer"] == replies["merged"].update.text
    assert row["decoding"]["merged"]["do_sample"] is False
    with pytest.raises(UserError, match="send a prompt first"):
        dashboard.vote([], "merged", GREEDY)


def test_export_writes_the_requested_merge(dashboard, pair, tmp_path):
    dashboard.folders = AllowedFolders([tmp_path])
    out = dashboard.export(str(tmp_path / "merged"), MergeSpec("linear", 0.25))
    record = json.loads((out / "merge_config.json").read_text())
    assert record["config"]["lam"] == 0.25 and record["config"]["method"] == "linear"
    assert (out / "README.md").is_file()
    exported = weights(out)
    direct, thinking = weights(pair["direct"]), weights(pair["thinking"])
    for name, tensor in exported.items():
        expected = 0.75 * direct[name] + 0.25 * thinking[name]
        torch.testing.assert_close(tensor, expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(UserError, match="outside the allowed folders"):
        dashboard.export("/etc/spectrum-export", MergeSpec("linear", 0.25))


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (MergeSpec("nope", 0.5), "unknown merge method"),
        (MergeSpec("linear", 1.5), "outside \\[0, 1\\]"),
        (MergeSpec("linear", 0.5, layers="9-12"), "layer"),
        (MergeSpec("task_arithmetic", 0.5), "needs a base model"),
        (MergeSpec("twin", 0.5, params={"mask_rate": "x"}), "mask_rate"),
    ],
)
def test_bad_merge_requests_are_user_errors(dashboard, request_, message):
    with pytest.raises(UserError, match=message):
        dashboard.set_merge(request_)


def test_allowed_folders_refuse_escapes(tmp_path):
    inside = tmp_path / "allowed"
    inside.mkdir()
    (inside / "link").symlink_to("/etc")
    folders = AllowedFolders([inside])
    assert folders.resolve(str(inside / "db.duckdb"), "DB file") == inside / "db.duckdb"
    for escape in (str(inside / ".." / "x"), str(inside / "link" / "passwd"), "/etc/passwd"):
        with pytest.raises(UserError, match="outside the allowed folders"):
            folders.resolve(escape, "DB file")
    with pytest.raises(UserError, match="no DB file given"):
        folders.resolve("  ", "DB file")


def test_decoding_modes():
    assert decoding_for("direct", "per-model defaults", 100).temperature == 0.7
    assert decoding_for("merged", "per-model defaults", 100).temperature == 0.6
    assert decoding_for("thinking", "greedy", 100).do_sample is False
    custom = decoding_for("direct", "custom", 50, temperature=1.1, top_p=0.5, top_k=3)
    assert (custom.temperature, custom.top_p, custom.top_k, custom.max_new_tokens) == (
        1.1,
        0.5,
        3,
        50,
    )
    with pytest.raises(UserError, match="sampling mode"):
        decoding_for("direct", "hot", 10)
    with pytest.raises(UserError, match="at least 1"):
        decoding_for("direct", "greedy", 0)


def test_each_column_uses_its_own_models_chat_template(pair, tmp_path):
    """A Qwen3-2507-style thinking template opens <think> itself; the direct one must not."""
    thinking = tmp_path / "thinking"
    shutil.copytree(pair["thinking"], thinking)
    tokenizer = AutoTokenizer.from_pretrained(thinking)
    tokenizer.chat_template = tokenizer.chat_template.replace(
        "'<|im_start|>assistant\\n'", "'<|im_start|>assistant\\n<think>\\n'"
    )
    tokenizer.save_pretrained(thinking)
    board = Dashboard(pair["direct"], thinking, device="cpu", db=tmp_path / "votes.duckdb")
    conversation = [{"role": "user", "content": PROMPT}]
    prompts = {
        column: board.tokenizers[column].apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )
        for column in ("direct", "thinking")
    }
    assert prompts["thinking"].endswith("assistant\n<think>\n")
    assert prompts["direct"].endswith("assistant\n")
    # A merge's template is the one sweeps give it: λ = 0 the direct parent's, any other λ
    # the thinking parent's (what its export carries).
    for lam, column in ((0.0, "direct"), (0.4, "thinking"), (1.0, "thinking")):
        merged_prompt = board.template_tokenizer(MergeSpec("linear", lam)).apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )
        assert merged_prompt == prompts[column]
    replies = list(board.chat([], PROMPT, MergeSpec("linear", 1.0), GREEDY))[-1]
    # λ = 1 is the thinking weights and template in both columns: the same reply.
    model = AutoModelForCausalLM.from_pretrained(thinking, dtype=torch.float32).eval()

    def greedy(prompt: str) -> str:
        encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        out = model.generate(**encoded, max_new_tokens=TOKENS, do_sample=False)
        new = out[0, encoded["input_ids"].shape[1] :]
        return tokenizer.decode(new[new != tokenizer.eos_token_id], skip_special_tokens=True)

    assert replies["thinking"].update.text == greedy(prompts["thinking"])
    assert replies["merged"].update.text == greedy(prompts["thinking"])


def test_the_embedded_pair_answers_each_message_afresh(tmp_path):
    """It learned single prompts: a follow-up is answered as if it came first (the history
    would derail it), and the stored vote says what the merged column really saw."""
    board = Dashboard(
        DEFAULT_PAIR / "direct", DEFAULT_PAIR / "thinking", device="cpu", db=tmp_path / "v.db"
    )
    assert not board.history and "History is off" in board.history_note()
    spec = MergeSpec("linear", 0.5)
    first = list(board.chat([], "96 - 2", spec, GREEDY))[-1]
    alone = list(board.chat([], PROMPT, spec, GREEDY))[-1]
    followed = list(board.chat([Turn("96 - 2", first)], PROMPT, spec, GREEDY))[-1]
    for column in ("direct", "merged", "thinking"):
        assert followed[column].update.text == alone[column].update.text
    board.vote([Turn("96 - 2", first), Turn(PROMPT, followed)], "merged", GREEDY)
    assert read_votes(board.db)[-1]["history"] == []
    with_history = Dashboard(
        DEFAULT_PAIR / "direct", DEFAULT_PAIR / "thinking", device="cpu", db=tmp_path / "v.db",
        history=True,
    )  # fmt: skip
    assert with_history.history and "own earlier answers" in with_history.history_note()


def test_a_stopped_turn_is_marked_and_takes_no_vote(dashboard):
    halt = threading.Event()
    halt.set()  # Stop pressed before the first token: no column can end on its own
    last = list(dashboard.chat([], PROMPT, MergeSpec("linear", 0.5), GREEDY, stop=halt))[-1]
    for reply in last.values():
        assert reply.update.finished and reply.update.stopped and not reply.update.truncated
    with pytest.raises(UserError, match="stopped"):
        dashboard.vote([Turn(PROMPT, last)], "merged", GREEDY)
    done = final(dashboard, MergeSpec("linear", 0.5))
    assert not any(reply.update.stopped for reply in done.values())


def test_a_blind_vote_names_the_model_and_is_marked_blind(dashboard):
    replies = final(dashboard, MergeSpec("linear", 0.4))
    turn = Turn(PROMPT, replies, ("thinking", "direct", "merged"), revealed=False)
    assert turn.blind and turn.column_at(0) == "thinking"
    dashboard.vote([turn], turn.column_at(2), GREEDY)  # the page's "C"
    row = read_votes(dashboard.db)[-1]
    assert (row["choice"], row["lam"], row["blind"]) == ("merged", 0.4, True)
    dashboard.vote([Turn(PROMPT, replies)], "direct", GREEDY)
    assert read_votes(dashboard.db)[-1]["blind"] is False
    # Every shuffle of the three columns turns up (200 draws: missing one has p < 1e-14).
    assert {blind_order() for _ in range(200)} == set(itertools.permutations(COLUMNS))


def test_the_default_export_folder_is_made_and_the_export_downloads_as_a_loadable_zip(
    pair, tmp_path, monkeypatch
):
    """A fresh clone has no exports/: the first export makes it (and only it). The zip
    a visitor downloads unpacks to a checkpoint transformers loads, equal to the export."""
    exports = tmp_path / "clone" / "exports"
    exports.parent.mkdir()
    monkeypatch.setattr(service, "EXPORTS", exports)
    board = Dashboard(pair["direct"], pair["thinking"], device="cpu", db=tmp_path / "v.duckdb")
    out = board.export(str(exports / "merged"), MergeSpec("linear", 0.25))
    assert out == exports / "merged" and (out / "model.safetensors").is_file()
    archive = board.archive(str(exports / "merged"))
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(tmp_path / "unzipped")
    unzipped = tmp_path / "unzipped" / "merged"
    model = AutoModelForCausalLM.from_pretrained(unzipped, dtype=torch.float32)
    exported = weights(out)
    for name, tensor in model.state_dict().items():
        if name in exported:
            assert torch.equal(tensor, exported[name]), name
    assert AutoTokenizer.from_pretrained(unzipped)("12 + 7")["input_ids"]
    # Only whole outputs of this tool are zipped: a hand edit is refused by name.
    (out / "README.md").write_text("edited")
    with pytest.raises(UserError, match="not offered for download: README.md was changed"):
        board.archive(str(exports / "merged"))
