#!/usr/bin/env bash
# The demo: the RAMP paper's Figure-1 effect, through the service.
#
# Five minutes or less on an idle 2-core machine: 191 s after a 99 s set-up on a fresh clone (AVX-512 +
# AVX512-BF16 host; 407-460 s on an AVX2-only one; README): 3 fine-tunings x 2 epochs of 1,500 training
# digits (12 optimiser steps an epoch) and 4 default-suite evaluations on the same 100 test points,
# all at once, channels-last. Where the minutes go (measured on the AVX2 host, docs/service.md
# "Measured"): the 4 evaluations (AutoAttack's APGD-CE + APGD-T on 3 norms) about half, Ray Train's
# start-up of 3 runs (8 actor processes each) a sixth, the training the rest. 1,500
# digits is where the l_1 fine-tuning already takes the start's l_inf robustness to 0 of 100
# points; with 1,000 it kept 9 (measured), with 4,000 the demo takes 2-3 minutes longer.
#
# An l_inf-robust small-cnn (adversarially trained on mnist-5k; shipped in demo/base-linf-at/, made by
# scripts/make_demo_base.py) is fine-tuned three ways at once: with l_1 adversarial examples only
# (AT-l_1), with E-AT and with RAMP. l_1-only fine-tuning destroys the model's l_inf robustness;
# RAMP keeps it. The demo starts the service embedded in the background (SQLite + a local Ray head it
# owns), submits the three fine-tuning jobs and an evaluation of the starting model, follows them
# (per-epoch lines: the cheap monitor suite, an upper bound), then prints
#   - the results table: clean / l_inf / l_2 / l_1 / union with 95 % Wilson intervals, from the
#     default suite (AutoAttack's APGD-CE + APGD-T, standard settings, float32 decisions; see
#     docs/evaluation.md), every job on the same test points, and the paired differences with exact
#     McNemar p values (`rampctl results`);
#   - the per-epoch l_inf / l_1 / union curve of each fine-tuning (monitor suite, labelled so) and
#     the Figure-1 verdict, stated only through the paired tests;
#   - the web page and the Ray dashboard URL;
# then shuts the service down (which stops its Ray head -- only its own processes), unless
# DEMO_KEEP=1 (then it keeps serving the pages until Ctrl-C).
#
# The from-scratch comparison (RAMP vs E-AT trained from random weights, ~10+ minutes) is
# `bash scripts/demo_scratch.sh`; the small-scale reproduction of the paper, docs/results-mnist.md.
# Knobs (environment): DEMO_EPOCHS (fine-tuning epochs, default 2), DEMO_TRAIN_N (training points,
# default 1,500 of the 4,000), DEMO_EVAL_N (test points of the final evaluation, default 100), DEMO_CHECKS_N
# (points of the evaluation-rigour checks, default 0: they add minutes; `rampctl submit --kind eval
# --job-id N --checks-n 100` runs them later), DEMO_MONITOR_N (per-epoch monitor points, default 100),
# DEMO_BASE (the starting checkpoint), DEMO_KEEP, RAMP_HOME (default: a fresh temp dir), RAMP_PORT,
# RAMPCTL.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

PY="${PYTHON:-.venv/bin/python}"
RAMPCTL="${RAMPCTL:-.venv/bin/rampctl}"
# shellcheck source=scripts/demo_service.sh
source scripts/demo_service.sh
EPOCHS="${DEMO_EPOCHS:-2}"
TRAIN_N="${DEMO_TRAIN_N:-1500}"
EVAL_N="${DEMO_EVAL_N:-100}"
CHECKS_N="${DEMO_CHECKS_N:-0}"
MONITOR_N="${DEMO_MONITOR_N:-100}"
BASE="${DEMO_BASE:-demo/base-linf-at}"
# Channels-last memory layout for the training and the evaluations: the same float32 model and
# decisions, ~1.5x faster convolution + pooling on CPU (docs/performance.md). DEMO_CHANNELS_LAST=0: off.
LAYOUT=()
[ "${DEMO_CHANNELS_LAST:-1}" = "1" ] && LAYOUT=(--channels-last)
started=$(date +%s)

[ -f "$BASE/meta.json" ] || { echo "no starting model at $BASE (make it: $PY scripts/make_demo_base.py)" >&2; exit 1; }
export RAMP_HOME="${RAMP_HOME:-$(mktemp -d /tmp/ramp-demo-XXXXXX)}"
# All four jobs at once (one torch thread each): nothing waits for a free slot while a core idles.
export RAMP_MAX_CONCURRENT_JOBS="${RAMP_MAX_CONCURRENT_JOBS:-4}"
export RAMP_RAY_NUM_CPUS="${RAMP_RAY_NUM_CPUS:-4}"
# Jobs may name paths only under the data roots (default $RAMP_HOME/data): the starting model goes there.
mkdir -p "$RAMP_HOME/data"
cp -r "$BASE" "$RAMP_HOME/data/base-linf-at"
BASE_CKPT="$RAMP_HOME/data/base-linf-at"
start_service

# The same seed and the same first EVAL_N test points for every job: the paired tests need them.
finetune=(--kind finetune --init-from-checkpoint "$BASE_CKPT" --dataset mnist-5k --epochs "$EPOCHS"
          --eval-n "$EVAL_N" --checks-n "$CHECKS_N" --monitor-n "$MONITOR_N" --seed 0 "${LAYOUT[@]}")
[ -n "$TRAIN_N" ] && finetune+=(--train-n "$TRAIN_N")
echo "== fine-tuning the l_inf-AT model (${BASE}) with RAMP, E-AT and l_1 examples only:" \
     "${EPOCHS} epoch(s) each; final evaluation on ${EVAL_N} test points"
key="demo-$$-$(date +%s)"
RAMP_JOB="$("$RAMPCTL" submit --method ramp "${finetune[@]}" --idempotency-key "$key-ramp" -q)"
EAT_JOB="$("$RAMPCTL" submit --method eat "${finetune[@]}" --idempotency-key "$key-eat" -q)"
L1_JOB="$("$RAMPCTL" submit --method at-l1 "${finetune[@]}" --idempotency-key "$key-l1" -q)"
BASE_JOB="$("$RAMPCTL" submit --kind eval --checkpoint "$BASE_CKPT" --n "$EVAL_N" --checks-n "$CHECKS_N" \
            --seed 0 "${LAYOUT[@]}" --idempotency-key "$key-base" -q)"
echo "jobs: starting model (evaluation) #${BASE_JOB}, AT-l_1 #${L1_JOB}, E-AT #${EAT_JOB}, RAMP #${RAMP_JOB}"

status=0
for job in "$L1_JOB" "$EAT_JOB" "$RAMP_JOB" "$BASE_JOB"; do
    "$RAMPCTL" status "$job" --follow || status=1
done

echo "== results (default suite; 95 % Wilson intervals; paired exact McNemar tests on the same points)"
"$RAMPCTL" results "$BASE_JOB" "$L1_JOB" "$EAT_JOB" "$RAMP_JOB" || status=1
echo
"$PY" scripts/demo_report.py --base "$BASE_JOB" --l1 "$L1_JOB" --eat "$EAT_JOB" --ramp "$RAMP_JOB" || status=1

dashboard="$(dashboard_of "$RAMP_JOB")"
echo
echo "Web page (log in with the token in ${RAMP_HOME}/admin_token):"
echo "  ${RAMP_URL}/ui/compare?ids=${BASE_JOB},${L1_JOB},${EAT_JOB},${RAMP_JOB}   (each job: ${RAMP_URL}/ui/jobs/ID)"
echo "Ray dashboard: ${dashboard}"
echo "Demo wall time: $(( $(date +%s) - started )) s (set-up excluded)."
echo "From scratch instead (RAMP vs E-AT from random weights, 10+ minutes): bash scripts/demo_scratch.sh"
if [ "${DEMO_KEEP:-0}" = "1" ]; then
    echo "DEMO_KEEP=1: the service keeps running (pages and dashboard stay up); Ctrl-C stops it."
    wait "$SERVICE_PID" || true
fi
exit "$status"
