"""sha256 of weight files, remembered across runs.

Every merge, sweep and analysis records its parents' content hashes, and hashing costs a
CPU-second per 1.5 GB each time. A file that has not changed is looked up instead, keyed by
what a rewrite changes: real path, device, inode, size, and mtime and ctime in nanoseconds.
A digest is only remembered for a file last changed more than ``RACY_SECONDS`` before the
hash began (git's "racy clean" rule): a file still being written could change again within
one timestamp tick. ``SPECTRUM_CACHE`` names the cache folder, or ``off``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

RACY_SECONDS = 2.0
MAX_ENTRIES = 10_000


def cache_path() -> Path | None:
    folder = os.environ.get("SPECTRUM_CACHE")
    if folder == "off":
        return None
    if not folder:
        root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        folder = Path(root) / "thinking-spectrum"
    return Path(folder) / "sha256.json"


def file_sha256(path: Path) -> str:
    """The file's sha256 (hex), from the cache when the file is unchanged."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    key = f"{real}|{stat.st_dev}|{stat.st_ino}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}"
    cache = cache_path()
    known = _load(cache) if cache else {}
    if key in known:
        return known[key]
    started = time.time()
    digest = _sha256(real)
    if cache and started - stat.st_mtime > RACY_SECONDS:
        known = _load(cache)  # another process may have added entries meanwhile
        known[key] = digest
        _store(cache, dict(list(known.items())[-MAX_ENTRIES:]))
    return digest


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(1 << 20))  # one buffer, reused: no page faults per read
    with open(path, "rb", buffering=0) as handle:
        while size := handle.readinto(buffer):
            digest.update(buffer[:size])
    return digest.hexdigest()


def _load(cache: Path) -> dict[str, str]:
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):  # missing or damaged: start over, never fail a merge
        return {}
    return known if isinstance(known, dict) else {}


def _store(cache: Path, known: dict[str, str]) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        staged = cache.with_name(f".{cache.name}.{os.getpid()}")
        staged.write_text(json.dumps(known, allow_nan=False))
        os.replace(staged, cache)  # readers see the old or the new file, never half of one
    except OSError:
        pass  # a read-only home only costs the next run a re-hash
