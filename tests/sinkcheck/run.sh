#!/bin/sh
# Builds the HTTP sink check and the mock-api under ASan+UBSan with the project's warning flags,
# starts a throwaway PostgreSQL 15 (Unix socket in a temporary directory: no TCP port), runs
# the check against the real mock-api binary, and cleans up.
#   tests/sinkcheck/run.sh [MOCK_BIN]   (default: a stand-alone build of `engage mock-api`)
# Environment: PGBIN (default /usr/lib/postgresql/15/bin), CC (default gcc).
set -eu
cd "$(dirname "$0")/../.."
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
CC=${CC:-gcc}
WORK=$(mktemp -d /tmp/engage-sinkcheck.XXXXXX)
chmod 755 "$WORK"
PGDATA="$WORK/pgdata"
cleanup() {
    if [ -f "$PGDATA/postmaster.pid" ]; then
        run_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate stop >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# initdb refuses to run as root: use the postgres OS user then.
run_pg() {
    if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$(printf '%s ' "$@")"; else "$@"; fi
}
if [ "$(id -u)" = 0 ]; then chown postgres "$WORK"; fi

CFLAGS="-std=c17 -D_GNU_SOURCE -Wall -Wextra -Wpedantic -Werror -Wshadow -Wstrict-prototypes
 -Wmissing-prototypes -Wformat=2 -Wconversion -Wno-sign-conversion -Wimplicit-fallthrough
 -Werror=vla -fsanitize=address,undefined -fno-sanitize-recover=all -g -O1 -Isrc"
CORE="src/core/error.c src/core/log.c src/core/buf.c src/core/event.c src/core/backoff.c
 src/admin/metrics.c"
PKG="$(pkg-config --cflags --libs libpq libcurl libmicrohttpd jansson)"

MOCK_BIN=${1:-}
if [ -z "$MOCK_BIN" ]; then
    MOCK_BIN="$WORK/mock-api"
    # shellcheck disable=SC2086
    $CC $CFLAGS -o "$MOCK_BIN" tests/sinkcheck/mock_api_main.c src/cli/cmd_mock_api.c \
        src/mockapi/mockapi.c $CORE $PKG -lpthread -lm
fi
# shellcheck disable=SC2086
$CC $CFLAGS -o "$WORK/http_sink_check" tests/sinkcheck/http_sink_check.c src/sink/http.c \
    src/sink/http_policy.c src/pipeline/dlq.c $CORE $PKG -lpthread -lm
chmod 755 "$WORK"/http_sink_check "$MOCK_BIN" 2>/dev/null || true

run_pg "$PGBIN/initdb" -D "$PGDATA" -A trust -U postgres >/dev/null
run_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$WORK/pg.log" -w \
    -o "'-c listen_addresses= -k $WORK -c fsync=off'" start >/dev/null

ENGAGE_TEST_PG="host=$WORK user=postgres dbname=postgres" \
    "$WORK/http_sink_check" "$MOCK_BIN"
