# Sourced by scripts/demo.sh and scripts/demo_kafka.sh (bash, set -euo pipefail) with
# $top (the checkout) and $demo (the demo's name) set: a temporary directory $dir for the
# stack, the pids of what the demo starts ($pids: stopped at exit, then the stack; with
# ENGAGE_DEMO_KEEP=1 the stack is left running), free_port, and wait_until.
dir=$(mktemp -d "/tmp/engage-$demo.XXXXXX")
chmod 755 "$dir"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -z "${ENGAGE_DEMO_KEEP:-}" ]; then
        bash "$top/scripts/stack.sh" down "$dir/stack" >/dev/null 2>&1 || true
        rm -rf "$dir"
    else
        echo "stack left running: source $dir/stack/env; stop with scripts/stack.sh down $dir/stack"
    fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_until DESCRIPTION SECONDS COMMAND...: runs COMMAND every 0.1 s until it succeeds.
wait_until() {
    local what=$1 secs=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            echo "$demo: timed out waiting for $what" >&2
            return 1
        fi
        sleep 0.1
    done
}

# start_mock_api URL PORT: `engage mock-api` on 127.0.0.1:PORT (its log in $dir), once it
# answers at URL; then the three sample content rows both demos enrich with.
start_mock_api() {
    echo "== starting the mock external API on $1"
    "$engage" mock-api --listen "127.0.0.1:$2" >"$dir/mock-api.log" 2>&1 &
    pids+=($!)
    wait_until "the mock API" 10 curl -sf "$1/stats"
    psql -q "$ENGAGE_PG" <<'SQL'
INSERT INTO content(content_id, content_type, length_seconds, title) VALUES
  (1, 'video', 300, 'The brief''s example'),
  (2, 'article', NULL, 'No length'),
  (3, 'podcast', 1800, 'Long listen');
SQL
}
