#!/usr/bin/env bash
# Teacher vs distilled student in every export format: writes benchmarks/results/export_lenet.md.
#   bash benchmarks/export_lenet.sh RUN_DIR      # a finished default-recipe run, e.g. runs/default-hybrid_k5-s0
# (the fp32 formats; int8 against fp32 is benchmarks/int8.py)
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:?usage: bash benchmarks/export_lenet.sh RUN_DIR}
out=benchmarks/results/export_lenet.md
tmp=$(mktemp -d)
load=$(cut -d' ' -f1 /proc/loadavg)
dfkd export "$run" --format safetensors,torchscript,onnx --out "$tmp/export"   # best student, parity-checked
for f in student.onnx student.torchscript.pt student.safetensors; do
    OMP_NUM_THREADS=1 dfkd evaluate "$tmp/export/$f" --threads 1 --out "$tmp/$f.md" > /dev/null
done
{
    echo "# Export: teacher vs student on CPU (MNIST, LeNet-5 -> LeNet-5-half)"
    echo
    echo "\`bash benchmarks/export_lenet.sh $run\` ($(date -u +%F)); student: the best checkpoint of that run."
    echo "Latency: median over repeated calls, teacher and student taking turns, 1 thread, ms per image;"
    echo "MB: file size in that format (10^6 bytes); accuracy on the full 10,000-image MNIST test split."
    echo "Machine: $(getconf _NPROCESSORS_ONLN) cores shared with other jobs; 1-minute load at the start: $load."
    for f in student.onnx student.torchscript.pt student.safetensors; do echo; cat "$tmp/$f.md"; done
} > "$out"
rm -rf "$tmp"
cat "$out"
