#!/usr/bin/env bash
# The GPU check: one self-contained run (at most ~8 minutes on one GPU) of hpcft's GPU paths — bf16 SFT of a
# ~0.45 B-parameter Llama built here, ZeRO-3 with NVMe offload, LoRA, QLoRA, FSDP through accelerate, packing —
# and hpcft's trainer against a hand-written Trainer on the same batches; prints one table (tokens/s, MFU).
#
#   benchmarks/gpu_check.sh [--wheels DIR] [--out DIR] [--cpu-smoke] [-- gpu_check.py options]
#
# The machine needs Python with PyTorch and transformers; no network. --wheels DIR installs the rest
# (hpcft's other dependencies, deepspeed, peft, accelerate, bitsandbytes, ...) from the wheels in DIR:
#   pip download -d wheels deepspeed peft accelerate bitsandbytes datasets submitit python-hostlist ...
# --cpu-smoke: the same script on a CPU-only machine with an 8 M-parameter model (CI runs it; the
# CUDA-only cases say "skipped").
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${TMPDIR:-/tmp}/hpcft-gpu-check"
wheels=""
args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --wheels) wheels="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --cpu-smoke) args+=(--cpu-smoke); shift ;;
        --) shift; args+=("$@"); break ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
python="${PYTHON:-python3}"
if [[ -n "$wheels" ]]; then
    "$python" -m pip install -q --no-index --find-links "$wheels" --no-build-isolation -e "$here[train]"
fi
"$python" -c "import hpcft, torch, transformers" 2>/dev/null || {
    echo "gpu_check.sh: hpcft, torch and transformers must import (pass --wheels DIR to install hpcft's side)" >&2
    exit 2
}
rm -rf "$out"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}" HPCFT_RUNS_DIR="$out/runs"
start=$SECONDS
"$python" "$here/benchmarks/gpu_check.py" --out "$out" ${args[@]+"${args[@]}"}
rc=$?
echo "gpu_check: $((SECONDS - start)) s; report $out/gpu_check.json"
exit $rc
