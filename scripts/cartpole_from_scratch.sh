#!/usr/bin/env bash
# The bundled cartpole model's recipe from nothing: collect real data, train keypoints, then
# the structured dynamics, then the reward head and the renderer's read-back, and score the
# result on held-out data.
#
#     bash scripts/cartpole_from_scratch.sh [OUT]        (default: runs/from-scratch)
#
# Every step's wall time goes to OUT/times.tsv. Rerunning continues: a finished step is
# skipped (OUT/done/STEP marks it), an interrupted collection or training resumes.
set -euo pipefail
OUT=${1:-runs/from-scratch}
THREADS=${THREADS:-2}
export MUJOCO_GL=${MUJOCO_GL:-egl}
mkdir -p "$OUT/done"

step() {  # step NAME COMMAND...: run COMMAND unless it finished before, log its wall time
    local name=$1; shift
    if [[ -e $OUT/done/$name ]]; then echo "== $name: done already"; return; fi
    echo "== $name: $*"
    local t0=$SECONDS
    "$@"
    printf '%s\t%s\n' "$name" $((SECONDS - t0)) | tee -a "$OUT/times.tsv"
    touch "$OUT/done/$name"
}

resume() { [[ -e $1/train_state.json ]] && echo --resume || true; }

step collect-keypoint-data \
    keycld-gym collect --system cartpole --out "$OUT/data/task-500" --episodes 500 --frames 50 --seed 0 --workers 2
step collect-dynamics-data \
    keycld-gym collect --system cartpole --out "$OUT/data/task-long" --episodes 100 --frames 200 --seed 2 --workers 2
step train-keypoints \
    keycld-gym train --system cartpole --data "$OUT/data/task-500" --out "$OUT/keypoints" --seed 0 \
    --dynamics-steps 0 --threads "$THREADS" --quiet $(resume "$OUT/keypoints")
step train-dynamics \
    keycld-gym train --system cartpole --data "$OUT/data/task-long" --out "$OUT/dynamics" --seed 0 \
    --keypoints-from "$OUT/keypoints/model" --input-matrix constant --input-keypoints 0 --linear-potential \
    --no-potential-mlp --dynamics-steps 800 --max-horizon 48 --horizon-ramp 200 --threads "$THREADS" --quiet \
    $(resume "$OUT/dynamics")
step fit-reward \
    keycld-gym fit-reward --checkpoint "$OUT/dynamics/model" --data "$OUT/data/task-500" \
    --data "$OUT/data/task-long" --out "$OUT/reward" --threads "$THREADS"
step fit-renderer \
    keycld-gym fit-renderer --checkpoint "$OUT/reward" --data "$OUT/data/task-500" \
    --data "$OUT/data/task-long" --out "$OUT/model" --steps 1000 --threads "$THREADS" --quiet
echo "training total (s): $(awk '{s += $2} END {print s}' "$OUT/times.tsv")"

# held out: sequences the model never saw (another seed, longer, with swing-ups and balancing)
step collect-eval-data \
    keycld-gym collect --system cartpole --out "$OUT/data/task-eval" --episodes 40 --frames 400 --seed 1 --workers 2
step evaluate \
    keycld-gym evaluate-model --checkpoint "$OUT/model" --data "$OUT/data/task-eval" --json "$OUT/eval.json"
