#!/usr/bin/env bash
# Submit a sweep: sweep.sh [SPEC.json] [IDEMPOTENCY_KEY]   (SPEC.json may be '-' for stdin)
# Without SPEC.json: a small 2x2 grid, RAMP lambda x eps_1 on mnist-5k (a quick demo).
# Prints the created sweep as JSON; its trials: curl -H "Authorization: Bearer $RAMP_TOKEN" \
#   "$RAMP_URL/v1/jobs/ID/trials"   (or scripts/curl/results.sh ID for the sweep's result).
set -euo pipefail
. "$(dirname "$0")/_common.sh"
spec="${1:--default-}"
if [ "$spec" = "-default-" ]; then
    body='{"kind": "sweep",
  "base": {"kind": "train", "method": "ramp", "dataset": "mnist-5k", "epochs": 1, "max_steps": 20,
           "train_n": 512, "monitor_n": 64, "eval_n": 64},
  "param_space": {"params.ramp.lambda": {"grid": [0.5, 5]}, "epsilons.l1": {"grid": [8, 12]}},
  "num_samples": 1, "metric": "union", "mode": "max", "max_concurrent_trials": 2, "scheduler": null}'
    data=(--data-binary "$body")
else
    [ "$spec" = "-" ] || [ -r "$spec" ] || { echo "error: cannot read $spec" >&2; exit 2; }
    data=(--data-binary "@${spec}")
fi
extra=()
if [ $# -ge 2 ]; then extra=(-H "Idempotency-Key: $2"); fi
ramp_curl -X POST "${RAMP_URL}/v1/jobs" -H "Content-Type: application/json" "${extra[@]}" "${data[@]}"
