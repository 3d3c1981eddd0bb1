#!/usr/bin/env bash
# Final metrics (clean, linf, l2, l1, union) and per-epoch history of jobs: results.sh JOB_ID [JOB_ID...]
# One JSON object per line: {"job_id": ..., "history": [...], "final": {...}}. Pipe to jq for a table:
#   scripts/curl/results.sh 1 2 | jq -r '[.job_id, .final.clean, .final.linf, .final.l2, .final.l1, .final.union] | @tsv'
set -euo pipefail
. "$(dirname "$0")/_common.sh"
if [ $# -lt 1 ]; then echo "usage: $0 JOB_ID [JOB_ID...]" >&2; exit 2; fi
for id in "$@"; do
    ramp_curl "${RAMP_URL}/v1/jobs/${id}/metrics"
done
