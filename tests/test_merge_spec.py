"""MergeSpec: one frozen record of a merge, its single validation and its exact JSON form."""

from __future__ import annotations

import json
import math

import pytest

from spectrum.cli import main
from spectrum.errors import UserError
from spectrum.live import LiveMerger
from spectrum.merge import MergeSpec, check_lam

SPECS = [
    MergeSpec(),
    MergeSpec("slerp", 0.1 + 0.2),  # a float with a long repr survives JSON
    MergeSpec("ties", 0.5, {"density": 0.8}, layers="1-2", modules="attn,mlp", seed=7),
    MergeSpec("linear", 0.4, lam_schedule=(0.25, 1 / 3, 0.9)),
]


@pytest.mark.parametrize("spec", SPECS)
def test_json_round_trip_is_exact_and_the_spec_hashes(spec):
    wire = json.dumps(spec.to_json())  # what a distributed sweep ships between processes
    again = MergeSpec.from_json(json.loads(wire))
    assert again == spec and hash(again) == hash(spec)
    assert {spec: 1}[again] == 1


def test_equal_specs_from_different_spellings():
    assert MergeSpec("ties", 0.5, {"b": 1, "a": 2}) == MergeSpec("ties", 0.5, [("a", 2), ("b", 1)])
    assert MergeSpec(modules="attn,mlp") == MergeSpec(modules=["attn", "mlp"])
    assert MergeSpec(lam="0.5") == MergeSpec(lam=0.5)


def test_checked_resolves_parameters_and_is_idempotent():
    spec = MergeSpec("ties", 0.5).checked(has_base=True)
    assert dict(spec.params) == {"density": 0.8, "tie_break": "zero"}
    assert spec.checked(has_base=True) == spec
    assert MergeSpec("ties", 0.5, {"density": "0.8"}).checked(has_base=True) == spec


@pytest.mark.parametrize(
    ("spec", "kwargs", "message"),
    [
        (MergeSpec("nope", 0.5), {}, "unknown merge method"),
        (MergeSpec("ties", 0.5), {"has_base": False}, "needs a base model"),
        (MergeSpec("linear", 1.5), {}, r"outside \[0, 1\]"),
        (MergeSpec("linear", math.nan), {"allow_extrapolation": True}, "not a finite number"),
        (MergeSpec("linear", math.inf), {"allow_extrapolation": True}, "not a finite number"),
        (MergeSpec("linear", 0.5, lam_schedule=(0.2, 7.0)), {}, "λ=7"),
        (MergeSpec("linear", 0.5, layers="2-9"), {"num_layers": 4}, "layer 4"),
        (MergeSpec("twin", 0.5, {"mask_rate": "x"}), {}, "mask_rate"),
    ],
)
def test_checked_refuses_with_one_line(spec, kwargs, message):
    with pytest.raises(UserError, match=message) as caught:
        spec.checked(**kwargs)
    assert "\n" not in str(caught.value)
    assert "--" not in str(caught.value)  # page wording: flags only in the CLI's hint


def test_bad_fields_fail_at_construction():
    with pytest.raises(UserError, match="module kind"):
        MergeSpec(modules=("ffn",))
    with pytest.raises(UserError, match="numeric λ"):
        MergeSpec(lam="high")
    with pytest.raises(UserError, match="unknown merge spec key"):
        MergeSpec.from_json({"method": "linear", "strength": 1})


def test_extrapolation_is_allowed_only_when_asked():
    assert check_lam(1.5, allow_extrapolation=True) == 1.5
    with pytest.raises(UserError) as caught:
        check_lam(-0.1)
    assert "--allow-extrapolation" in caught.value.for_cli()


def test_live_merge_reports_exactly_the_checked_spec(tiny_pair):
    merger = LiveMerger.load(tiny_pair["direct"], tiny_pair["thinking"], tiny_pair["base"])
    asked = MergeSpec("dare", 0.3, seed=5, modules=("mlp",))
    loaded = merger.set(asked)
    assert loaded.spec == asked.checked(has_base=True, num_layers=4)
    assert loaded.spec != asked.with_lam(0.31).checked(has_base=True)


def test_cli_error_names_the_flag(tiny_pair, tmp_path, capsys):
    args = ["merge", "--direct", str(tiny_pair["direct"]), "--thinking"]
    args += [str(tiny_pair["thinking"]), "--lam", "1.5", "--out", str(tmp_path / "m")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "outside [0, 1]" in err and "--allow-extrapolation" in err and "\n" not in err
