# Shared by the curl scripts: the service URL and token, and one curl call that fails on HTTP errors.
# RAMP_URL (default http://127.0.0.1:8000); RAMP_TOKEN, else the embedded service's admin token file.
RAMP_URL="${RAMP_URL:-http://127.0.0.1:8000}"
RAMP_URL="${RAMP_URL%/}"
if [ -z "${RAMP_TOKEN:-}" ]; then
    token_file="${RAMP_ADMIN_TOKEN_FILE:-${RAMP_HOME:-$HOME/.ramp}/admin_token}"
    if [ -r "$token_file" ]; then
        RAMP_TOKEN="$(tr -d '[:space:]' < "$token_file")"
    else
        echo "error: set RAMP_TOKEN (or run the embedded service, which writes $token_file)" >&2
        exit 2
    fi
fi

ramp_curl() {
    # --fail-with-body: exit 22 on HTTP >= 400 but still print the service's error JSON.
    local rc=0
    curl -sS --fail-with-body -H "Authorization: Bearer ${RAMP_TOKEN}" "$@" || rc=$?
    echo
    return "$rc"
}
