#!/usr/bin/env bash
# Every check that needs a GPU, in one run (a GPU machine is lent for minutes at a time):
#   1. the training benchmark on CUDA (MNIST-sized rows, the graph path beside the others);
#   2. then, side by side: the unit tests with the GPU visible; every chapter under
#      `make test-anywhere`'s nbval-lax plus tolerance, one after another, timed; the same
#      chapters executed on this machine's CPU (CUDA hidden), timed; the numerics
#      fingerprint under numerics.env with each instruction-set knob turned down.
# Usage: bash benchmarks/gpu_check.sh OUT_DIR   (python3 with a CUDA build of torch, nbval,
# pytest-xdist and pytest-timeout importable; the repository root as working directory).
# Everything ends up in OUT_DIR.tar.gz as well (a lent machine may send back only a few
# files); benchmarks/gpu_record.py turns OUT_DIR into benchmarks/results/gpu-checks/*.json.
# Lesson of the first run (2026-11-28): the unit tests, the CUDA chapters and the CPU chapters
# at once share 16 cores, so the chapter times are not timings; give TESTS_S room.
set -u
OUT=$(realpath -m "${1:?usage: gpu_check.sh OUT_DIR}")
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" MPLBACKEND=Agg
PYTHONPATH="$PWD/validation:$PYTHONPATH" python3 -c "import torch, os, json
from machine import cpu_name
print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda,
  'device': torch.cuda.get_device_name(), 'cpu': cpu_name(), 'cpu_count': os.cpu_count()}))" \
    > "$OUT/machine.json"
cat "$OUT/machine.json"

timeout "${BENCH_S:-150}" python3 benchmarks/bench.py --device cuda --only mnist --rounds 1 \
    --no-compile --out "$OUT/bench-cuda.json" > "$OUT/bench.log" 2>&1
echo "bench: exit $?"

OMP_NUM_THREADS=2 timeout "${TESTS_S:-200}" python3 -m pytest tests -q -n 4 -p no:cacheprovider --timeout 150 \
    --ignore tests/test_check_html.py --ignore tests/test_environment.py \
    --ignore tests/test_numerics.py --junitxml "$OUT/tests.xml" > "$OUT/tests.log" 2>&1 &
tests=$!

(
    for nb in book/*.ipynb; do
        start=$(date +%s.%N)
        timeout 150 python3 -m pytest "$nb" -q -p no:cacheprovider --nbval-lax --nbval-current-env \
            --nbval-sanitize-with book/nbval_sanitize.cfg > "$OUT/cuda-$(basename "$nb" .ipynb).log" 2>&1
        code=$?
        echo "$(basename "$nb") $code $(python3 -c "import time; print(round(time.time() - $start, 1))")"
    done > "$OUT/chapters-cuda.txt"
) &
chapters=$!

(
    # a reader without a GPU on this machine: CUDA hidden, 4 threads (the other jobs share
    # the cores). On a copy, since executing rewrites the notebooks' outputs.
    copy=$(mktemp -d)
    cp -r book benchmarks validation vaetut numerics.env "$copy"
    cd "$copy" && CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=4 MKL_NUM_THREADS=4 \
        PYTHONPATH="$copy:$PYTHONPATH" \
        timeout "${CPU_S:-220}" python3 validation/execute_notebooks.py book/*.ipynb \
        --times "$OUT/times-cpu.json" > "$OUT/chapters-cpu.log" 2>&1
) &
cpu=$!

(
    set -a; . ./numerics.env; set +a
    for knobs in "X=1" "MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2" \
                 "MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41" \
                 "ATEN_CPU_CAPABILITY=avx512 MKL_CBWR=AUTO"; do
        echo "$knobs $(env $knobs CUDA_VISIBLE_DEVICES= python3 validation/numerics_fingerprint.py 2>&1 | tail -1)"
    done > "$OUT/fingerprints.txt"
) &

wait $tests; echo "tests: exit $?"
wait $chapters; echo "chapters on CUDA:"; cat "$OUT/chapters-cuda.txt"
wait $cpu; echo "chapters on the CPU: exit $?"
wait
cat "$OUT/fingerprints.txt"
tail -3 "$OUT/tests.log"
tar -czf "$OUT.tar.gz" -C "$OUT" .
