"""`spectrum confirm --batch-size`: the confirmation's cells need not be the sweep's (the
shipped DB's confirmations run 1000-unit cells after a 100-unit sweep). Greedy rows do not
depend on the cells, so two confirmations cut differently store the same answers."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb

from spectrum.cli import main

PAIR = Path(__file__).resolve().parents[1] / "assets" / "pair"
# The confirmation's rows: its data seed makes all three configuration ids new.
ROWS = (
    "SELECT config_id, problem_id, sample_idx, response, n_tokens FROM samples WHERE "
    "config_id IN (SELECT unnest([config_id, direct_config_id, thinking_config_id]) "
    "FROM confirmations) ORDER BY ALL"
)


def test_confirm_cells_of_another_size_store_the_same_greedy_rows(tmp_path, capsys):
    swept = tmp_path / "sweep.duckdb"
    args = ["sweep", "--direct", str(PAIR / "direct"), "--thinking", str(PAIR / "thinking")]
    args += ["--methods", "linear", "--lam", "0,0.9,1", "--bench", "synthetic", "--levels"]
    args += ["3", "--limit", "4", "--greedy", "--max-new-tokens", "60", "--batch-size", "4"]
    assert main([*args, "--db", str(swept), "--no-progress"]) == 0
    cut = {size: tmp_path / f"confirm-{size}.duckdb" for size in ("sweep", "1")}
    for path in cut.values():
        shutil.copyfile(swept, path)
    confirm = ["confirm", "--config", "linear@0.9", "--limit", "3", "--no-progress"]
    assert main([*confirm, "--db", str(cut["sweep"])]) == 0
    assert main([*confirm, "--db", str(cut["1"]), "--batch-size", "1"]) == 0
    rows = {}
    for size, path in cut.items():
        with duckdb.connect(str(path), read_only=True) as con:
            rows[size] = con.execute(ROWS).fetchall()
    # Three configurations (λ 0.9 and both parents) on the same three fresh problems.
    assert len(rows["1"]) == 9 and rows["1"] == rows["sweep"]
    # A cell of no units is refused in one line, before anything is written.
    capsys.readouterr()
    assert main([*confirm, "--db", str(cut["1"]), "--batch-size", "0"]) == 2
    assert "--batch-size at least 1" in capsys.readouterr().err
    with duckdb.connect(str(cut["1"]), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM confirmations").fetchone() == (1,)
