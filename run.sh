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
    test) setup; browser; exec "$VENV/bin/python" -m pytest "$@" ;;
    *)    echo "usage: ./run.sh app|test [ARGS...]" >&2; exit 2 ;;
esac
