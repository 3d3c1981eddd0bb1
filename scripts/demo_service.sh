# Sourced by the demos (scripts/demo.sh, scripts/demo_scratch.sh): start the service embedded in the
# background (SQLite + a local Ray head it owns) and stop it -- and so only its own Ray head -- when
# the demo exits. Not a program of its own.
#
# Reads PY and RAMPCTL; exports RAMP_HOME, RAMP_PORT, RAMP_URL, RAMP_RAY_DASHBOARD_URL, RAMP_TOKEN.

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start_service() {
    export RAMP_HOME="${RAMP_HOME:-$(mktemp -d /tmp/ramp-demo-XXXXXX)}"
    export RAMP_PORT="${RAMP_PORT:-$(free_port)}"
    export RAMP_URL="http://127.0.0.1:${RAMP_PORT}"
    # A free dashboard port, so a demo runs next to any other Ray head on the machine.
    export RAMP_RAY_DASHBOARD_URL="${RAMP_RAY_DASHBOARD_URL:-http://127.0.0.1:$(free_port)}"
    export RAMP_LOG_JSON="${RAMP_LOG_JSON:-false}"
    # Seconds on an idle machine; on a crowded one `ray start` alone can take minutes.
    export RAMP_RAY_START_TIMEOUT_S="${RAMP_RAY_START_TIMEOUT_S:-600}"
    unset RAY_ADDRESS DATABASE_URL  # embedded: the demo owns its database and its Ray head

    echo "== starting the service at ${RAMP_URL} (home ${RAMP_HOME}; log ${RAMP_HOME}/service.log)"
    "$RAMPCTL" serve --port "$RAMP_PORT" >"${RAMP_HOME}/service.log" 2>&1 &
    SERVICE_PID=$!
    trap stop_service EXIT

    local _
    for _ in $(seq 1 1200); do  # the service answers once its Ray head is up (RAMP_RAY_START_TIMEOUT_S)
        if curl -sf "${RAMP_URL}/healthz" >/dev/null 2>&1; then break; fi
        if ! kill -0 "$SERVICE_PID" 2>/dev/null; then
            echo "the service exited during start-up:" >&2
            tail -n 30 "${RAMP_HOME}/service.log" >&2
            exit 1
        fi
        sleep 0.5
    done
    curl -sf "${RAMP_URL}/healthz" >/dev/null || { echo "the service did not come up" >&2; exit 1; }
    RAMP_TOKEN="$(cat "${RAMP_HOME}/admin_token")"
    export RAMP_TOKEN
}

stop_service() {
    if kill -0 "$SERVICE_PID" 2>/dev/null; then
        echo "== stopping the service (and its Ray head)"
        kill -TERM "$SERVICE_PID"  # uvicorn shuts down gracefully: dispatcher, then the Ray head
        wait "$SERVICE_PID" 2>/dev/null || true
    fi
}

# The Ray dashboard's page of a job (its latest attempt), or "-".
dashboard_of() {
    curl -sf -H "Authorization: Bearer ${RAMP_TOKEN}" "${RAMP_URL}/v1/jobs/$1" \
        | "$PY" -c 'import json, sys; print(json.load(sys.stdin).get("ray_dashboard_url") or "-")'
}
