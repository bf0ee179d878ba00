"""The model card (README.md) written into every merged folder."""

from __future__ import annotations

from typing import Any


def model_card(record: dict[str, Any], copied: list[str]) -> str:
    parents = record["parents"]
    base_models = "".join(f"  - {p['source']}\n" for p in parents.values())
    rows = "".join(
        f"| {role} | `{p['source']}` | `{p['content_hash'][:23]}…` |\n"
        for role, p in parents.items()
    )
    params = ", ".join(f"{k}={v!r}" for k, v in record["params"].items()) or "none"
    scope = record["scope"]
    where = ", ".join(f"{k}: {v}" for k, v in scope.items() if v is not None) or "every tensor"
    return (
        f"---\nlibrary_name: transformers\ntags:\n  - merge\n  - thinking-spectrum\n"
        f"base_model:\n{base_models}---\n\n"
        f"# Merged model: {record['method']} at λ = {record['lam']}\n\n"
        f"Made with Thinking Spectrum {record['version']} by merging a direct (instruct) and a "
        f"thinking model's weights. λ = 0 is the direct parent, λ = 1 the thinking parent.\n\n"
        f"- method: `{record['method']}`, parameters: {params}, seed: {record['seed']}\n"
        f"- applied to: {where} (everything else is the direct parent's)\n"
        f"- config and tokenizer files from the {record['copy_from']} parent: "
        f"{', '.join(copied) or 'none'}\n\n"
        f"| parent | source | content hash |\n|---|---|---|\n{rows}\n"
        "Reproduce with `spectrum merge --config merge_config.json --out DIR`.\n"
    )
