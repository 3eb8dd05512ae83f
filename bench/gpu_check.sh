#!/usr/bin/env bash
# The GPU check: the cuda test tier, then `bench.py --device cuda --quick`; under 4 minutes on one H100.
# ZOO=1 adds, between them, the four zoo students' KD cells of 3 seeds (eager loop vs batched ensemble vs
# CUDA graphs vs the whole step as one graph, steady epochs; about 3-4 minutes more). VARIANTS=1 adds
# bench/student_step_variants.py for the four zoo students (eager loop, per-student CUDA graphs, the whole
# step as one graph) and the teachers' forward (eager vs graphed): about 1-2 minutes more.
#
#     bench/gpu_check.sh [DIR]        # DIR: $OUT if set, else bench/results/gpu
#
# Writes DIR/gpu_check.log (everything printed) and DIR/gpu_check.json, the JSON rewritten after
# every step, so a run cut off by a time limit still leaves what it measured. Without a GPU it
# says so, records it and exits 0. PYTHON picks the interpreter (default: python3).
# Time limits per step (seconds): CUDA_TIER_S (default 120), BENCH_S (default 150), ZOO_S (default 260),
# VARIANTS_S (default 150), KERNELS_S (default 150, each of its two runs). KERNELS=1 adds the student step's
# kernels for issue 34: the captured whole step with fused SGD and in NCHW at batch 128, and at batch 512
# (not yet run on a GPU: 4 archs x 3 ways, then x 2 at batch 512). BENCH_ARGS adds arguments to the quick bench (e.g. with ZOO=1, which times the
# ensemble figures at a larger size: BENCH_ARGS="--ensemble-students cnn --ensemble-images 1024").
set -u
cd "$(dirname "$0")/.."
DIR="${1:-${OUT:-bench/results/gpu}}"
PY="${PYTHON:-python3}"
mkdir -p "$DIR" || { echo "gpu_check: cannot create $DIR" >&2; exit 2; }
LOG="$DIR/gpu_check.log"
JSON="$DIR/gpu_check.json"
: >"$LOG"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TQDM_DISABLE=1

say() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }

# record STEP STATUS SECONDS [FILE]: add one step to the JSON (FILE: a JSON or junit XML it produced)
record() {
    "$PY" - "$JSON" "$@" <<'EOF'
import json, os, sys, time
from pathlib import Path
path, step, status, seconds = Path(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
extra = Path(sys.argv[5]) if len(sys.argv) > 5 else None
doc = json.loads(path.read_text()) if path.exists() else {"steps": []}
entry = {"step": step, "status": status, "seconds": round(seconds, 1), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
if extra is not None and extra.exists():
    if extra.suffix == ".json":
        entry["result"] = json.loads(extra.read_text())
    elif extra.suffix == ".xml":  # pytest's junit report: the counts and what failed
        import xml.etree.ElementTree as ET
        root = ET.parse(extra).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        entry["tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        entry["tests"]["time_s"] = float(suite.get("time", 0))
        entry["failed"] = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                           if c.find("failure") is not None or c.find("error") is not None]
doc["steps"] = [s for s in doc["steps"] if s["step"] != step] + [entry]
tmp = path.with_suffix(".tmp")
tmp.write_text(json.dumps(doc, indent=2) + "\n")
os.replace(tmp, path)
EOF
}

# run STEP LIMIT_S [FILE] -- COMMAND...: run it with a time limit, output to the screen and the log
run() {
    local step="$1" limit="$2" file="$3"; shift 4
    say "$step: $* (limit ${limit}s)"
    local t0=$SECONDS
    timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]} status=passed
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status=timeout; elif [ "$rc" -ne 0 ]; then status="failed (exit $rc)"; fi
    say "$step: $status in $((SECONDS - t0))s"
    record "$step" "$status" "$((SECONDS - t0))" ${file:+"$file"}
    [ "$status" = passed ]
}

rm -f "$JSON"
probe=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>>"$LOG")
if [ $? -ne 0 ]; then
    say "cannot import torch with $PY (see $LOG)"
    record environment "failed (no torch)" 0
    exit 2
fi
if [ -z "$probe" ]; then
    say "no CUDA device here: the cuda tier and the GPU bench are skipped (nothing was measured)"
    record environment "skipped: no CUDA device" 0
    exit 0
fi
say "device: $probe; torch $("$PY" -c 'import torch; print(torch.__version__)'); results in $DIR"
record environment "cuda: $probe" 0

ok=0
run cuda_tier "${CUDA_TIER_S:-120}" "$DIR/cuda_tier.xml" -- \
    "$PY" -m pytest -m cuda -q -rA -p no:cacheprovider --junitxml="$DIR/cuda_tier.xml" || ok=1
if [ "${ZOO:-0}" = 1 ]; then
    run ensemble_zoo "${ZOO_S:-260}" "$DIR/ensemble_zoo.json" -- \
        "$PY" bench/bench.py --device cuda --only-ensemble --ensemble-students cnn,resnetc20,resnetc32,resnet18 \
        --ensemble-images 4096 --json "$DIR/ensemble_zoo.json" || ok=1
fi
if [ "${VARIANTS:-0}" = 1 ]; then
    run step_variants "${VARIANTS_S:-150}" "$DIR/step_variants.json" -- \
        "$PY" bench/student_step_variants.py --device cuda --variants loop,graphed,wholestep,ensemble_wholestep --steps 20 \
        --teachers resnet18,resnetc20 --json "$DIR/step_variants.json" || ok=1
fi
if [ "${KERNELS:-0}" = 1 ]; then  # issue 34: fused SGD, the layout and a 4x batch inside the captured whole step
    run kernels_b128 "${KERNELS_S:-150}" "$DIR/kernels_b128.json" -- \
        "$PY" bench/student_step_variants.py --device cuda --variants wholestep,wholestep_fused,wholestep_nchw \
        --steps 20 --json "$DIR/kernels_b128.json" || ok=1
    run kernels_b512 "${KERNELS_S:-150}" "$DIR/kernels_b512.json" -- \
        "$PY" bench/student_step_variants.py --device cuda --variants wholestep,wholestep_fused --batch-size 512 \
        --steps 10 --json "$DIR/kernels_b512.json" || ok=1
fi
run bench_cuda_quick "${BENCH_S:-150}" "$DIR/bench_cuda_quick.json" -- \
    "$PY" bench/bench.py --device cuda --quick ${BENCH_ARGS:-} --json "$DIR/bench_cuda_quick.json" || ok=1
say "done: $([ $ok -eq 0 ] && echo 'all steps passed' || echo 'a step failed or ran out of time'); see $JSON"
exit $ok
