"""Results read from per-row columns beyond accuracy, one row per (benchmark,
configuration): Pass@k for every k ≤ n, judge scores of judged benchmarks
(creative_writing) and the style-bleed rate.

The tables carry ``method``, ``lam``, ``label`` and, per metric m, ``m``, ``m_low`` and
``m_high``, so ``figures.metric_vs_lam`` draws them like ``results.summaries``.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd

from spectrum.eval.metrics import estimate, pass_at_k_curve, wilson_ci
from spectrum.eval.results import confirmation_ids, kind, label
from spectrum.eval.style_bleed import style_bleed

# The columns that name a configuration, and what files that lack one read instead.
_CONFIG = {
    "params": "NULL", "module_lams": "NULL", "layers": "NULL", "modules": "NULL",
    "template": "NULL",
}  # fmt: skip
JUDGE_COLUMNS = ["judge", "judge_low", "judge_high", "n_samples", "n_scored", "n_failed"]
BLEED_COLUMNS = ["bleed", "bleed_low", "bleed_high", "bleed_mean", "n_samples"]
_NAMING = ["benchmark", "config_id", "method", "lam", "params", "module_lams", "label", "kind"]


def pass_curves(table: pd.DataFrame) -> pd.DataFrame:
    """Pass@1 … Pass@n of every configuration of ``results.summaries`` (n: its smallest
    sample count per problem): columns benchmark, config_id, method, lam, label, k, pass."""
    rows = []
    for row in table.itertuples():
        counts = [(len(p.correct), int(sum(p.correct))) for p in row.problems.samples]
        for k, value in enumerate(pass_at_k_curve(counts, int(row.k)), start=1):
            rows.append(
                dict(benchmark=row.benchmark, config_id=row.config_id, method=row.method,
                     lam=row.lam, label=row.label, k=k, value=value)
            )  # fmt: skip
    columns = ["benchmark", "config_id", "method", "lam", "label", "k", "value"]
    return pd.DataFrame(rows, columns=columns).rename(columns={"value": "pass"})


def _samples(con: duckdb.DuckDBPyConnection, columns: str, where: str = "TRUE") -> pd.DataFrame:
    present = {row[0] for row in con.execute("DESCRIBE samples").fetchall()}
    naming = ", ".join(c if c in present else f"{old} AS {c}" for c, old in _CONFIG.items())
    return con.execute(
        f"SELECT benchmark, config_id, method, lam, {naming}, problem_id, {columns} "
        f"FROM samples WHERE {where} AND NOT list_contains(?, config_id) "
        "ORDER BY benchmark, config_id, problem_id, sample_idx",
        [confirmation_ids(con)],
    ).df()


def _naming(first: pd.Series) -> dict:
    row = {c: None if pd.isna(first[c]) else first[c] for c in ("method", *_CONFIG)}
    row.update(benchmark=first["benchmark"], config_id=first["config_id"], lam=float(first["lam"]))
    row.update(kind=kind(row), label=label(row))
    return {c: row[c] for c in _NAMING}


def judge_summaries(con: duckdb.DuckDBPyConnection, *, seed: int = 0) -> pd.DataFrame:
    """Judged rows per configuration: the mean piece score (0–20; mean over a prompt's
    scored samples, then over prompts) with its 90 % bootstrap interval over prompts, and
    how many samples were and were not scored."""
    present = {row[0] for row in con.execute("DESCRIBE samples").fetchall()}
    if "judge_score" not in present:
        return pd.DataFrame(columns=_NAMING + JUDGE_COLUMNS)
    samples = _samples(con, "judge_score, judge_error", "correct IS NULL")
    rows = []
    for _, config in samples.groupby(["benchmark", "config_id"], sort=False):
        scored = config.dropna(subset=["judge_score"])
        per_prompt = scored.groupby("problem_id")["judge_score"].mean().tolist()
        found = estimate(per_prompt, seed=seed)
        rows.append(
            dict(_naming(config.iloc[0]), judge=found.value, judge_low=found.low,
                 judge_high=found.high, n_samples=len(config), n_scored=len(scored),
                 n_failed=len(config) - len(scored))
        )  # fmt: skip
    return pd.DataFrame(rows, columns=_NAMING + JUDGE_COLUMNS)


def bleed_summaries(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Per configuration: the share of responses with any style-bleed sign (``bleed``, a
    Wilson 90 % interval over responses) and the mean number of signs. Files from before
    the column are scored from their stored responses here."""
    present = {row[0] for row in con.execute("DESCRIBE samples").fetchall()}
    if "style_bleed" in present:
        samples = _samples(con, "style_bleed")
    else:
        samples = _samples(con, "response")
        samples["style_bleed"] = [style_bleed(text) for text in samples.pop("response")]
    rows = []
    for _, config in samples.groupby(["benchmark", "config_id"], sort=False):
        scores = config["style_bleed"].to_numpy(dtype=float)
        low, high = wilson_ci(int((scores > 0).sum()), len(scores))
        rows.append(
            dict(_naming(config.iloc[0]), bleed=float(np.mean(scores > 0)), bleed_low=low,
                 bleed_high=high, bleed_mean=float(scores.mean()), n_samples=len(scores))
        )  # fmt: skip
    return pd.DataFrame(rows, columns=_NAMING + BLEED_COLUMNS)
