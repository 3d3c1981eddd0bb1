#!/usr/bin/env bash
# A job's status, progress, timings and final metrics: status.sh JOB_ID
set -euo pipefail
. "$(dirname "$0")/_common.sh"
if [ $# -ne 1 ]; then echo "usage: $0 JOB_ID" >&2; exit 2; fi
ramp_curl "${RAMP_URL}/v1/jobs/$1"
