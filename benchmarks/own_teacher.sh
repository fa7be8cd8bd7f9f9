#!/usr/bin/env bash
# The worked example of docs/own-teacher.md, end to end: a teacher trained outside dfkd (timm
# test_efficientnet, in_chans=1, its own mean/std, a wrapped checkpoint and a card), distilled with keys
# only, exported, and evaluated from raw PNGs. Writes benchmarks/results/own_teacher/.
#   bash benchmarks/own_teacher.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=runs/own-teacher-example
results=benchmarks/results/own_teacher
rm -rf "$work" && mkdir -p "$work" "$results"
{
    python teachers/example_own_teacher.py out=$work/user steps=1000 test_images=10000
    dfkd distill teacher.name=test_efficientnet teacher.checkpoint=$work/user/teacher.pt data.root=$work/user/test \
        student.name=lenet5_half out_dir=$work run_name=own
    dfkd export $work/own
    dfkd evaluate $work/own/export/student.onnx --threads 1 --out $results/evaluate.md
} 2>&1 | tr '\r' '\n' | grep -v -E '^ *[0-9]+%\||^ *$' > $results/log.txt
cp $work/user/teacher.json $work/own/config.yaml $work/own/summary.json $work/own/metrics.jsonl \
    $work/own/export/student.json $results/
echo "wrote $results ($(date -u +%F), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores)" \
    | tee $results/README.txt
