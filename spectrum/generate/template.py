"""Tokenizers loaded with their chat template tried first, in a separate bounded process.

A chat template is a program from the model's folder: ``{{ "x" * 1000000000 }}`` makes a
gigabyte string and nested loops can run for hours, inside the process that serves every
visitor. transformers renders templates in a jinja sandbox that stops file and attribute
access, not size or time. So before a tokenizer's first use its template renders a few
typical conversations in a child process with a memory ceiling, a CPU-time limit and an
output bound; a template that blows any is refused with one line, and the server never runs
it. (A template that explodes only on much longer conversations is not caught here; the
page bounds a conversation's length by the model's context.)
"""

from __future__ import annotations

import functools
import json
import logging
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from spectrum.errors import UserError

log = logging.getLogger(__name__)

# The child's bounds once its imports are done: CPU seconds (not wall-clock time, so a
# busy machine does not fail a good template) and memory beyond what the imports took.
TEMPLATE_CPU_SECONDS = 10
TEMPLATE_MEMORY = 1 << 30
WALL_SECONDS = 300.0  # only a backstop for a child that stalls without using CPU
TEMPLATE_OUTPUT = 1 << 20  # characters a typical conversation's prompt may render to

# What the page and the sweeps send: a first turn, and a later turn after an answer that
# thought (so templates that strip or keep reasoning both take their branches).
SAMPLE_CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "<think>\n2 + 3 = 5\n</think>\n\n5"},
        {"role": "user", "content": "And 4 + 4?"},
    ],
]

_CHILD = """
import json, os, resource, signal, sys
cpu_seconds, memory = int(sys.argv[1]), int(sys.argv[2])
job = json.load(sys.stdin)
from transformers.utils.chat_template_utils import render_jinja_template
used = resource.getrusage(resource.RUSAGE_SELF)
cpu = int(used.ru_utime + used.ru_stime) + cpu_seconds
signal.signal(signal.SIGXCPU, signal.SIG_DFL)
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
size = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
resource.setrlimit(resource.RLIMIT_AS, (size + memory, size + memory))
rendered, _ = render_jinja_template(
    conversations=job["conversations"], chat_template=job["template"],
    add_generation_prompt=True, **job["tokens"],
)
print(json.dumps([len(text) for text in rendered]))
"""


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False) -> Any:
    """``AutoTokenizer.from_pretrained(path)``, its files and chat template checked: a
    malformed tokenizer file or a runaway template is a one-line ``UserError``."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as error:  # tokenizers raises a bare Exception for a bad tokenizer.json
        log.debug("tokenizer of %s failed to load", path, exc_info=True)
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"cannot load the tokenizer of {path} ({reason})") from None
    check_chat_template(tokenizer, path)
    return tokenizer


def check_chat_template(tokenizer: Any, source: str | Path) -> None:
    """Render ``tokenizer``'s chat template on the sample conversations in a child process
    bounded in memory, time and output; refuse the template if it fails any bound."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        return  # no template (raw prompts) or a named set transformers resolves itself
    tokens = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    try:
        _render_bounded(template, json.dumps(tokens, sort_keys=True))
    except _Refused as refused:
        raise UserError(f"the chat template of {source} {refused}") from None


class _Refused(Exception):
    """Why a template was refused, completed with its folder by the caller."""


@functools.lru_cache(maxsize=64)
def _render_bounded(template: str, tokens: str) -> None:
    """One child per distinct template: a pair's two parents and every later load of the
    same template reuse the verdict (a refusal raises, and is not cached)."""
    job = dict(template=template, conversations=SAMPLE_CONVERSATIONS, tokens=json.loads(tokens))
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(TEMPLATE_CPU_SECONDS), str(TEMPLATE_MEMORY)],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=WALL_SECONDS,
        )
    except subprocess.TimeoutExpired:
        raise _Refused(f"did not render a short conversation in {WALL_SECONDS:g} s") from None
    if done.returncode != 0:
        log.info("a chat template failed to render:\n%s", done.stderr[-4000:])
        lines = done.stderr.strip().splitlines()
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        if done.returncode == -signal.SIGXCPU:
            reason = f"it takes more than {TEMPLATE_CPU_SECONDS} s of CPU"
        elif "MemoryError" in reason or done.returncode < 0:
            reason = f"it needs more than {TEMPLATE_MEMORY >> 20} MiB"
        raise _Refused(f"cannot render a short conversation ({reason})")
    longest = max(json.loads(done.stdout.strip().splitlines()[-1]))
    if longest > TEMPLATE_OUTPUT:
        raise _Refused(
            f"renders a short conversation to {longest:,} characters "
            f"(the limit is {TEMPLATE_OUTPUT:,})"
        )
