#!/usr/bin/env bash
# Teacher vs distilled student in every export format: writes benchmarks/results/export_lenet.md.
#   bash benchmarks/export_lenet.sh RUN_DIR      # a finished default-recipe run, e.g. runs/default-hybrid_k5-s0
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:?usage: bash benchmarks/export_lenet.sh RUN_DIR}
out=benchmarks/results/export_lenet.md
tmp=$(mktemp -d)
dfkd export "$run" --out "$tmp/export"          # best student, every format, parity-checked
for f in student.onnx student.torchscript.pt student.safetensors; do
    OMP_NUM_THREADS=1 dfkd evaluate "$tmp/export/$f" --threads 1 --out "$tmp/$f.md" > /dev/null
done
{
    echo "# Export: teacher vs student on CPU (MNIST, LeNet-5 -> LeNet-5-half)"
    echo
    echo "\`bash benchmarks/export_lenet.sh $run\` ($(date -u +%F)); student: the best checkpoint of that run."
    echo "Latency: median over repeated calls, teacher and student taking turns, 1 thread, ms per image;"
    echo "MB: file size in that format (10^6 bytes); accuracy on the full 10,000-image MNIST test split."
    for f in student.onnx student.torchscript.pt student.safetensors; do echo; cat "$tmp/$f.md"; done
} > "$out"
rm -rf "$tmp"
cat "$out"
