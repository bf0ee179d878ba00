"""The loss along the linear path from the direct to the thinking parent.

Mode connectivity (ThinkingSpectrum paper, Sections 2 and 5) says merging works because
θ(λ) = (1−λ)·θ_D + λ·θ_T crosses no "high-loss ridge": every point of the path models
language about as well as the parents do. This measures it. For every λ of a grid, the
mean per-token negative log-likelihood (nats) of

* ``text``: held-out documents, every token after the first predicted from the ones
  before it: a text file with documents separated by blank lines; or a ``.jsonl`` file of
  ``{"prompt": ..., "text": ...}`` objects, where only ``text``'s tokens are scored, each
  given the prompt and the text before it (for models trained on responses only, whose
  prompt positions were never fitted: the embedded pair);
* ``direct_answers`` / ``thinking_answers``: each parent's own greedy answers to a few
  held-out synthetic problems (generated first by that parent with its chat template);
  only the answer tokens are scored, given the prompt as the parent saw it.

Every λ runs in the same batch on one ``SpectrumModel`` (a λ per row), so the whole
path costs one forward per batch of sequences. The ridge of a source is the highest
interior NLL minus the higher of the two endpoints' NLLs: ≤ 0 means no interior λ is
worse than the worse parent (no ridge).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from spectrum.errors import UserError
from spectrum.eval import store

SOURCES = ("text", "direct_answers", "thinking_answers")
SOURCE_TITLES = {
    "text": "held-out text",
    "direct_answers": "the direct parent's answers",
    "thinking_answers": "the thinking parent's answers",
}
COLUMNS = [
    "path_id", "created_at", "direct", "thinking", "direct_hash", "thinking_hash", "text_file",
    "text_sha256", "problems_per_level", "data_seed", "max_new_tokens", "source", "lam",
    "n_sequences", "n_tokens", "nll",
]  # fmt: skip


@dataclass(frozen=True)
class Scored:
    """One sequence to score: its token ids, and the first position whose token counts."""

    source: str
    ids: tuple[int, ...]
    start: int  # ≥ 1: position 0 has nothing before it to predict it from


@dataclass(frozen=True)
class Document:
    """Held-out text to score, after a prompt that is context only ("": none)."""

    text: str
    prompt: str = ""


@dataclass
class LossPath:
    path_id: str
    frame: pd.DataFrame  # COLUMNS: one row per (source, λ)


def read_documents(path: str | Path) -> list[Document]:
    """The documents of a text file: separated by blank lines (a document may span lines;
    its line breaks are kept, the blank lines between documents are not); of a ``.jsonl``
    file: one ``{"prompt": ..., "text": ...}`` object per non-empty line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no text file at {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not UTF-8 text (byte {error.start})") from None
    if path.suffix == ".jsonl":
        return _json_documents(path, lines)
    documents, current = [], []
    for line in [*lines, ""]:
        if line.strip():
            current.append(line)
        elif current:
            documents.append(Document("\n".join(current)))
            current = []
    if not documents:
        raise UserError(f"{path} holds no document (documents are separated by blank lines)")
    return documents


def _json_documents(path: Path, lines: list[str]) -> list[Document]:
    documents = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path}: line {number} is not JSON") from None
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            raise UserError(f'{path}: line {number} needs a string "text"')
        prompt = item.get("prompt", "")
        if not isinstance(prompt, str):
            raise UserError(f'{path}: line {number}: "prompt" must be a string')
        documents.append(Document(item["text"], prompt))
    if not documents:
        raise UserError(f"{path} holds no document (one JSON object per line)")
    return documents


def document_sequences(
    tokenizer: Any, documents: list[Document], max_positions: int, source: Path | str = "text"
) -> list[Scored]:
    """Each document tokenized (no special tokens; prompt and text apart, as a generation
    would see them), checked: a token to score, no more than the model's positions,
    nothing the tokenizer maps to its unknown token."""
    found = []
    for number, document in enumerate(documents, 1):
        prompt = _ids(tokenizer, document.prompt) if document.prompt else []
        ids = prompt + _ids(tokenizer, document.text)
        start = len(prompt) or 1
        if len(ids) <= start:
            raise UserError(f"{source}: document {number} has no token to score")
        if len(ids) > max_positions:
            raise UserError(
                f"{source}: document {number} is {len(ids)} tokens, over the model's "
                f"{max_positions} positions; split it"
            )
        unknown, whole = tokenizer.unk_token_id, document.prompt + document.text
        if unknown is not None and unknown in ids and tokenizer.unk_token not in whole:
            bad = [ch for ch in whole if unknown in _ids(tokenizer, ch)][:1]
            raise UserError(
                f"{source}: document {number} has text the tokenizer does not know"
                + (f": {bad[0]!r}" if bad else "")
            )
        found.append(Scored("text", tuple(ids), start))
    return found


def _ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.inference_mode()
def parent_answers(
    spectrum: Any,
    conversations: list[list[dict]],
    templates: dict[str, str | None],
    max_new_tokens: int,
) -> list[Scored]:
    """Each parent's greedy answer to every conversation, both parents in one batch (rows
    at λ = 0 and 1 of a linear spectrum model are the parents), each prompted with its
    own chat template; the answer's tokens run through its first end-of-sequence."""
    from spectrum.generate.batch import chat_prompts

    tokenizer = spectrum.tokenizer
    roles = [("direct", 0.0), ("thinking", 1.0)]
    prompts = [
        chat_prompts(tokenizer, [conversation], None, templates[role])[0]
        for role, _ in roles
        for conversation in conversations
    ]
    lams = [lam for _, lam in roles for _ in conversations]
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    enc = {key: value.to(spectrum.device) for key, value in enc.items()}
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    out = spectrum.generate(
        enc["input_ids"], lams, attention_mask=enc["attention_mask"], do_sample=False,
        max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad,
    )  # fmt: skip
    width = enc["input_ids"].shape[1]
    found = []
    for row, prompt in enumerate(prompts):
        answer = out[row, width:].tolist()
        if eos in answer:
            answer = answer[: answer.index(eos) + 1]
        prompt_ids = _ids(tokenizer, prompt)
        source = f"{roles[row // len(conversations)][0]}_answers"
        found.append(Scored(source, tuple(prompt_ids + answer), len(prompt_ids)))
    return [scored for scored in found if scored.start < len(scored.ids)]


@torch.inference_mode()
def token_nll(
    spectrum: Any, sequences: list[Scored], lams: list[float], *, batch_size: int = 64,
    progress: bool = True,
) -> pd.DataFrame:  # fmt: skip
    """Summed NLL (nats) and scored tokens of every (sequence, λ): a batch holds up to
    ``batch_size`` sequences, each at every λ. Columns: sequence, source, lam, nll_sum,
    n_tokens."""
    pad = spectrum.tokenizer.pad_token_id or 0
    rows = []
    starts = range(0, len(sequences), batch_size)
    for start in tqdm(starts, desc="loss path", unit="batch", disable=not progress):
        chunk = sequences[start : start + batch_size]
        width = max(len(s.ids) for s in chunk)
        grid = [(index, s, lam) for index, s in enumerate(chunk, start) for lam in lams]
        ids = torch.full((len(grid), width), pad, dtype=torch.long)
        mask = torch.zeros((len(grid), width), dtype=torch.long)
        scored = torch.zeros((len(grid), width), dtype=torch.bool)
        for row, (_, s, _) in enumerate(grid):
            ids[row, : len(s.ids)] = torch.tensor(s.ids)
            mask[row, : len(s.ids)] = 1
            scored[row, s.start : len(s.ids)] = True
        device = spectrum.device
        logits = spectrum(
            ids.to(device), [lam for *_, lam in grid], attention_mask=mask.to(device)
        ).logits.float()
        # Position t's logits predict token t+1: score tokens 1.. from positions ..−1.
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
        picked = logprobs.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
        keep = scored[:, 1:].to(device)
        sums = (-picked.double() * keep).sum(dim=1).tolist()
        counts = keep.sum(dim=1).tolist()
        for (index, s, lam), total, count in zip(grid, sums, counts, strict=True):
            rows.append(dict(sequence=index, source=s.source, lam=lam, nll_sum=total,
                             n_tokens=int(count)))  # fmt: skip
    return pd.DataFrame(rows)


def per_source(nll: pd.DataFrame) -> pd.DataFrame:
    """Mean per-token NLL per (source, λ): all the source's tokens weigh the same."""
    grouped = nll.groupby(["source", "lam"], sort=True).agg(
        n_sequences=("sequence", "nunique"), n_tokens=("n_tokens", "sum"),
        nll_sum=("nll_sum", "sum"),
    )  # fmt: skip
    grouped["nll"] = grouped["nll_sum"] / grouped["n_tokens"]
    return grouped.drop(columns="nll_sum").reset_index()


def check_inputs(
    direct: str, text: str | Path, lams: tuple[float, ...], *, problems_per_level: int,
    max_new_tokens: int, batch_size: int,
) -> None:  # fmt: skip
    """Everything about a loss path's input that can be wrong, before any model or DB: the
    numbers, the grid, the text and its documents under the direct parent's tokenizer."""
    from transformers import AutoConfig

    from spectrum.generate.template import load_tokenizer

    if not lams:
        raise UserError("the λ grid is empty")
    if problems_per_level < 1 or max_new_tokens < 1 or batch_size < 1:
        raise UserError("--problems, --max-new-tokens and --batch-size must be at least 1")
    documents = read_documents(text)
    config = AutoConfig.from_pretrained(direct)
    positions = int(getattr(config, "max_position_embeddings", 0) or 1 << 30)
    document_sequences(load_tokenizer(direct), documents, positions, text)


def loss_path(
    direct: str,
    thinking: str,
    text: str | Path,
    lams: tuple[float, ...],
    *,
    problems_per_level: int = 2,
    data_seed: int = 0,
    max_new_tokens: int = 160,
    batch_size: int = 64,
    device: str = "auto",
    progress: bool = True,
) -> LossPath:
    """NLL of ``text``'s documents and of each parent's answers at every λ of ``lams``."""
    from spectrum.eval.benchmarks import load_problems
    from spectrum.eval.sweep import chat_template_of
    from spectrum.live.spectrum_model import SpectrumModel
    from spectrum.weights.checkpoint import open_checkpoint

    check_inputs(
        direct, text, lams, problems_per_level=problems_per_level,
        max_new_tokens=max_new_tokens, batch_size=batch_size,
    )  # fmt: skip
    documents = read_documents(text)
    problems = load_problems("synthetic", limit=problems_per_level, seed=data_seed)
    spectrum = SpectrumModel.load(direct, thinking, method="linear", device=device)
    positions = int(getattr(spectrum.model.config, "max_position_embeddings", 0) or 1 << 30)
    sequences = document_sequences(spectrum.tokenizer, documents, positions, text)
    templates = {"direct": chat_template_of(direct), "thinking": chat_template_of(thinking)}
    conversations = [problem.conversation() for problem in problems]
    sequences += parent_answers(spectrum, conversations, templates, max_new_tokens)
    frame = per_source(token_nll(spectrum, sequences, list(lams), batch_size=batch_size,
                                 progress=progress))  # fmt: skip
    hashes = open_checkpoint(direct).content_hash(), open_checkpoint(thinking).content_hash()
    text_sha = hashlib.sha256(Path(text).read_bytes()).hexdigest()
    settings = (*hashes, text_sha, problems_per_level, data_seed, max_new_tokens)
    path_id = hashlib.sha256("\0".join(map(str, settings)).encode()).hexdigest()[:16]
    frame = frame.assign(
        path_id=path_id, created_at=datetime.now(UTC).replace(tzinfo=None), direct=direct,
        thinking=thinking, direct_hash=hashes[0], thinking_hash=hashes[1], text_file=str(text),
        text_sha256=text_sha, problems_per_level=problems_per_level, data_seed=data_seed,
        max_new_tokens=max_new_tokens,
    )  # fmt: skip
    return LossPath(path_id, frame[COLUMNS])


def ridges(frame: pd.DataFrame) -> pd.DataFrame:
    """Per source: the endpoints' NLL, the highest interior NLL and where, and the ridge
    (highest interior − higher endpoint; NaN without an interior λ or an endpoint)."""
    found = []
    for source, rows in frame.groupby("source", sort=False):
        by_lam = rows.set_index("lam")["nll"].sort_index()
        interior = by_lam[(by_lam.index > 0) & (by_lam.index < 1)]
        ends = [by_lam.get(0.0), by_lam.get(1.0)]
        complete = not interior.empty and None not in ends
        top = float(max(ends)) if complete else float("nan")
        found.append(
            dict(
                source=source,
                nll_direct=float("nan") if ends[0] is None else float(ends[0]),
                nll_thinking=float("nan") if ends[1] is None else float(ends[1]),
                interior_max=float(interior.max()) if not interior.empty else float("nan"),
                lam_at_max=float(interior.idxmax()) if not interior.empty else float("nan"),
                ridge=float(interior.max()) - top if complete else float("nan"),
            )
        )
    order = {source: i for i, source in enumerate(SOURCES)}
    return pd.DataFrame(found).sort_values("source", key=lambda s: s.map(order))


def ridge_sentence(row: Any) -> str:
    """The ridge of one source in a plain sentence."""
    what = SOURCE_TITLES.get(row["source"], row["source"])
    head = (
        f"loss path, {what}: NLL {row['nll_direct']:.3f} at λ=0 (direct), "
        f"{row['nll_thinking']:.3f} at λ=1 (thinking), highest in between "
        f"{row['interior_max']:.3f} at λ={row['lam_at_max']:g}; ridge {row['ridge']:+.3f} "
        "nats/token"
    )
    if pd.isna(row["ridge"]):
        return f"loss path, {what}: the grid needs λ=0, λ=1 and a λ in between for a ridge"
    if row["ridge"] <= 0:
        return head + ": no high-loss ridge (no λ in between is worse than the worse parent)"
    return head + (
        f": a high-loss ridge (λ={row['lam_at_max']:g} is worse than both parents by "
        f"{row['ridge']:.3f} nats/token)"
    )


def store_loss_path(con, result: LossPath) -> None:
    """Replace this path's rows (same parents, text and settings) in one transaction."""
    with store.transaction(con):
        con.execute("DELETE FROM loss_path WHERE path_id = ?", [result.path_id])
        store.insert(con, "loss_path", result.frame)


def read_loss_path(con) -> pd.DataFrame:
    """The latest stored loss path (empty when the DB has none, or predates the table)."""
    if "loss_path" not in {row[0] for row in con.execute("SHOW TABLES").fetchall()}:
        return pd.DataFrame(columns=COLUMNS)
    return con.execute(
        "SELECT * FROM loss_path WHERE path_id = (SELECT path_id FROM loss_path "
        "ORDER BY created_at DESC LIMIT 1) ORDER BY source, lam"
    ).df()
