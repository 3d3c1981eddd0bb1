#!/usr/bin/env bash
# Cancel a job: cancel.sh JOB_ID   (queued -> cancelled at once; running -> cancelling, then cancelled)
set -euo pipefail
. "$(dirname "$0")/_common.sh"
if [ $# -ne 1 ]; then echo "usage: $0 JOB_ID" >&2; exit 2; fi
ramp_curl -X POST "${RAMP_URL}/v1/jobs/$1/cancel"
