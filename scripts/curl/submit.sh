#!/usr/bin/env bash
# Submit a job: submit.sh SPEC.json [IDEMPOTENCY_KEY]   (SPEC.json may be '-' for stdin)
# Prints the created job as JSON (201), or the earlier job for a repeated idempotency key (200).
set -euo pipefail
. "$(dirname "$0")/_common.sh"
if [ $# -lt 1 ]; then echo "usage: $0 SPEC.json [IDEMPOTENCY_KEY]" >&2; exit 2; fi
spec="$1"
[ "$spec" = "-" ] || [ -r "$spec" ] || { echo "error: cannot read $spec" >&2; exit 2; }
extra=()
if [ $# -ge 2 ]; then extra=(-H "Idempotency-Key: $2"); fi
ramp_curl -X POST "${RAMP_URL}/v1/jobs" -H "Content-Type: application/json" "${extra[@]}" --data-binary "@${spec}"
