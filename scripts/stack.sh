#!/usr/bin/env bash
# The servers engage's tests and demo run against: PostgreSQL 15
# (wal_level=logical), Redis 7 and ClickHouse, on 127.0.0.1, on free ports,
# with every file (data, logs, sockets, pid files) under DIR.
#
#   stack.sh up DIR                  start what is not running; write DIR/env
#   stack.sh down DIR                stop everything; safe to call twice
#   stack.sh env DIR                 print DIR/env (shell-sourceable)
#   stack.sh status DIR              one line per service; exit 1 unless all run
#   stack.sh start|stop|restart DIR SERVICE
#                                    one service (pg, redis, clickhouse), on the
#                                    port it had: for outage and restart tests
#
# Several stacks may run at once (other engineers, CI): ports come from the
# kernel (bind to port 0) and a start that loses a race for its port retries
# on new ones. Only processes whose pid file lives in DIR, and that are
# checked to be the ones started there, are ever signalled.
#
# Knobs: STACK_READY_TIMEOUT (s, default 60), STACK_STOP_TIMEOUT (s, default
# 60), PG_BIN (default /usr/lib/postgresql/15/bin).
set -euo pipefail

ME=stack.sh
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
READY_TIMEOUT=${STACK_READY_TIMEOUT:-60}
STOP_TIMEOUT=${STACK_STOP_TIMEOUT:-60}
PORT_TRIES=8
# Debian's python starts faster than a pyenv shim; any python3 will do.
if [ -x /usr/bin/python3 ]; then PY=/usr/bin/python3; else PY=python3; fi

note() { echo "$ME: $*" >&2; }
die() {
    note "$*"
    exit 1
}
usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

is_root() { [ "$(id -u)" -eq 0 ]; }

# initdb and postgres refuse to run as root.
as_pg() {
    if is_root; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# alive PID: the process exists and is not a zombie.
alive() {
    local stat
    [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] || return 1
    stat=$(<"/proc/$1/stat") || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}

# wait_until TIMEOUT WHAT CMD...: poll CMD until it succeeds or TIMEOUT s pass.
wait_until() {
    local timeout=$1 what=$2
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            note "timed out after ${timeout}s waiting for $what"
            return 1
        fi
        sleep 0.05
    done
}

# wait_gone TIMEOUT PID: poll until PID has exited.
wait_gone() {
    local deadline=$((SECONDS + $1))
    while alive "$2"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.05
    done
}

# free_ports N: N distinct ports the kernel considers free right now. They are
# held together while picked, so they differ; another process may still take
# one before our server binds it, which the start functions detect.
free_ports() {
    "$PY" -c '
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
' "$1"
}

# port_owned_by PORT PID: PID holds the listening TCP socket on PORT.
port_owned_by() {
    "$PY" -c '
import os, sys
port, pid = int(sys.argv[1]), sys.argv[2]
inodes = set()
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    try:
        lines = open(table).read().splitlines()[1:]
    except OSError:
        continue
    for line in lines:
        f = line.split()
        if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
            inodes.add(f[9])
for fd in os.listdir("/proc/%s/fd" % pid):
    try:
        link = os.readlink("/proc/%s/fd/%s" % (pid, fd))
    except OSError:
        continue
    if link.startswith("socket:[") and link[8:-1] in inodes:
        sys.exit(0)
sys.exit(1)
' "$1" "$2" 2>/dev/null
}

# log_since FILE OFFSET: what FILE gained after OFFSET bytes.
log_size() { if [ -f "$1" ]; then wc -c <"$1"; else echo 0; fi; }
log_since() { if [ -f "$1" ]; then tail -c +"$(($2 + 1))" "$1"; fi; }

addr_in_use() { grep -qiE 'address already in use|could not bind|could not create listening socket'; }

load_ports() {
    PG_PORT='' REDIS_PORT='' CH_HTTP_PORT='' CH_TCP_PORT='' CH_INTERSERVER_PORT=''
    if [ -f "$DIR/ports" ]; then
        # shellcheck disable=SC1091
        . "$DIR/ports"
    fi
}

save_ports() {
    printf 'PG_PORT=%s\nREDIS_PORT=%s\nCH_HTTP_PORT=%s\nCH_TCP_PORT=%s\nCH_INTERSERVER_PORT=%s\n' \
        "$PG_PORT" "$REDIS_PORT" "$CH_HTTP_PORT" "$CH_TCP_PORT" "$CH_INTERSERVER_PORT" \
        >"$DIR/ports.tmp"
    mv "$DIR/ports.tmp" "$DIR/ports"
}

# ---------------------------------------------------------------- PostgreSQL

pg_running() {
    [ -f "$DIR/pg/data/postmaster.pid" ] &&
        as_pg "$PG_BIN/pg_ctl" -D "$DIR/pg/data" status >/dev/null 2>&1
}

# The socket path (dir + "/.s.PGSQL.NNNNN") must fit in sun_path (107 bytes);
# a DIR too deep for that gets its socket directory under /tmp instead,
# recorded in DIR/pg/sockdir and removed by down.
pg_sockdir() {
    local d="$DIR/pg/run"
    if [ $((${#d} + 15)) -gt 107 ]; then
        if [ -f "$DIR/pg/sockdir" ] && [ -d "$(<"$DIR/pg/sockdir")" ]; then
            d=$(<"$DIR/pg/sockdir")
        else
            d=$(mktemp -d /tmp/engage-pgsock.XXXXXX)
            echo "$d" >"$DIR/pg/sockdir"
        fi
    fi
    mkdir -p "$d"
    if is_root; then chown postgres:postgres "$d"; fi
    echo "$d"
}

pg_init() {
    mkdir -p "$DIR/pg"
    if is_root; then chown postgres:postgres "$DIR/pg"; fi
    chmod 700 "$DIR/pg"
    as_pg test -w "$DIR/pg" -a -x "$DIR/pg" ||
        die "user postgres cannot reach \"$DIR/pg\": every parent directory must be searchable by it (use a directory under /tmp)"
    [ -s "$DIR/pg/data/PG_VERSION" ] && return 0

    as_pg rm -rf "$DIR/pg/data"
    if ! as_pg "$PG_BIN/initdb" -D "$DIR/pg/data" -U postgres -A trust -E UTF8 --locale=C \
        >"$DIR/pg/initdb.log" 2>&1; then
        tail -n 20 "$DIR/pg/initdb.log" >&2
        die "initdb failed (log: $DIR/pg/initdb.log)"
    fi
    as_pg tee "$DIR/pg/data/pg_hba.conf" >/dev/null <<'EOF'
# written by engage scripts/stack.sh: loopback only, no passwords but for the role
# engage_pw, which tests use to see a wrong password refused (it does not exist until a
# test creates it)
host    all          engage_pw   127.0.0.1/32  scram-sha-256
host    replication  engage_pw   127.0.0.1/32  scram-sha-256
local   all          all                 trust
local   replication  all                 trust
host    all          all   127.0.0.1/32  trust
host    replication  all   127.0.0.1/32  trust
host    all          all   ::1/128       trust
host    replication  all   ::1/128       trust
EOF
    echo "include 'stack.conf'" | as_pg tee -a "$DIR/pg/data/postgresql.conf" >/dev/null
}

# pg_start PORT: 0 ready, 2 port taken, 1 any other failure.
pg_start() {
    local port=$1 sock log="$DIR/pg/postgres.log" off
    sock=$(pg_sockdir)
    # fsync stays on: the tests kill processes and then count what is durable.
    # timezone UTC: event_ts DEFAULT now() is a timestamp without time zone
    # that engage takes as UTC.
    as_pg tee "$DIR/pg/data/stack.conf" >/dev/null <<EOF
# written by engage scripts/stack.sh on each start
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$sock'
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
fsync = on
timezone = 'UTC'
log_timezone = 'UTC'
log_line_prefix = '%m [%p] %q%u@%d '
EOF
    off=$(log_size "$log")
    if ! as_pg setsid -w "$PG_BIN/pg_ctl" -D "$DIR/pg/data" -l "$log" -w -t "$READY_TIMEOUT" -s start \
        </dev/null >"$DIR/pg/pg_ctl.out" 2>&1 9>&-; then
        if log_since "$log" "$off" | addr_in_use; then return 2; fi
        cat "$DIR/pg/pg_ctl.out" >&2
        log_since "$log" "$off" | tail -n 20 >&2
        return 1
    fi
    wait_until "$READY_TIMEOUT" "PostgreSQL on port $port" \
        "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres || return 1
}

psql_stack() {
    PGOPTIONS="-c client_min_messages=warning" "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"
}

pg_setup_db() {
    if [ "$(psql_stack -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'engage'")" != 1 ]; then
        psql_stack -d postgres -c 'CREATE DATABASE engage' >/dev/null
    fi
    psql_stack -d engage -f "$SCRIPT_DIR/schema.sql" >/dev/null
}

pg_stop() {
    [ -f "$DIR/pg/data/postmaster.pid" ] || return 0
    as_pg "$PG_BIN/pg_ctl" -D "$DIR/pg/data" -m fast -w -t "$STOP_TIMEOUT" -s stop >/dev/null 2>&1 ||
        as_pg "$PG_BIN/pg_ctl" -D "$DIR/pg/data" -m immediate -w -t "$STOP_TIMEOUT" -s stop >/dev/null 2>&1 ||
        true
    if pg_running; then
        note "PostgreSQL in $DIR/pg/data did not stop"
        return 1
    fi
}

# --------------------------------------------------------------------- Redis

# redis_pid: the pid of the Redis started in DIR, if it runs. Redis rewrites
# its process title, so it is recognised by its working directory.
redis_pid() {
    local pid
    [ -s "$DIR/redis/redis.pid" ] || return 1
    pid=$(<"$DIR/redis/redis.pid")
    alive "$pid" && [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$DIR/redis" ] || return 1
    echo "$pid"
}

redis_is() {  # PORT PID: that port is answered by that process
    # timeout: a foreign process on the port may accept and never answer.
    timeout 2 redis-cli -h 127.0.0.1 -p "$1" info server 2>/dev/null | tr -d '\r' | grep -qx "process_id:$2"
}

# redis_start PORT: 0 ready, 2 port taken, 1 any other failure.
# appendonly + everysec: tests restart Redis mid-stream and the data must
# survive a clean restart.
redis_start() {
    local port=$1 log="$DIR/redis/redis.log" off pid deadline
    mkdir -p "$DIR/redis"
    cat >"$DIR/redis/redis.conf" <<EOF
# written by engage scripts/stack.sh on each start
bind 127.0.0.1
port $port
dir $DIR/redis
pidfile $DIR/redis/redis.pid
logfile $DIR/redis/redis.log
daemonize no
save ""
appendonly yes
appendfsync everysec
EOF
    rm -f "$DIR/redis/redis.pid"
    off=$(log_size "$log")
    setsid redis-server "$DIR/redis/redis.conf" </dev/null >>"$DIR/redis/stdout.log" 2>&1 9>&- &
    pid=$!
    deadline=$((SECONDS + READY_TIMEOUT))
    until redis_is "$port" "$pid"; do
        if ! alive "$pid"; then
            if log_since "$log" "$off" | addr_in_use; then return 2; fi
            log_since "$log" "$off" | tail -n 20 >&2
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            note "timed out after ${READY_TIMEOUT}s waiting for Redis on port $port"
            kill -TERM "$pid" 2>/dev/null || true
            return 1
        fi
        sleep 0.05
    done
}

redis_stop() {
    local pid
    pid=$(redis_pid) || return 0
    # SHUTDOWN flushes the AOF; TERM does the same if the command fails.
    timeout 10 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown >/dev/null 2>&1 ||
        kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$STOP_TIMEOUT" "$pid"; then
        note "Redis (pid $pid) did not stop in ${STOP_TIMEOUT}s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone 10 "$pid" || return 1
    fi
}

# ---------------------------------------------------------------- ClickHouse

CH_CMD=()
find_clickhouse() {
    if command -v clickhouse-server >/dev/null 2>&1; then
        CH_CMD=(clickhouse-server)
    elif [ -x /usr/sbin/clickhouse-server ]; then
        CH_CMD=(/usr/sbin/clickhouse-server)
    elif command -v clickhouse >/dev/null 2>&1; then
        CH_CMD=(clickhouse server)
    else
        die "no clickhouse-server found (run scripts/deps.sh)"
    fi
}

ch_pid() {
    local pid
    [ -s "$DIR/ch/ch.pid" ] || return 1
    pid=$(<"$DIR/ch/ch.pid")
    alive "$pid" && tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$DIR/ch/config.xml" || return 1
    echo "$pid"
}

# The root element is <yandex>: 18.16 does not know <clickhouse>, and current
# servers still accept <yandex>.
ch_write_config() {
    local ch="$DIR/ch"
    mkdir -p "$ch/data" "$ch/tmp" "$ch/user_files" "$ch/format_schemas" "$ch/log"
    cat >"$ch/config.xml" <<EOF
<?xml version="1.0"?>
<!-- written by engage scripts/stack.sh on each start -->
<yandex>
    <logger>
        <level>information</level>
        <log>$ch/log/clickhouse-server.log</log>
        <errorlog>$ch/log/clickhouse-server.err.log</errorlog>
        <size>100M</size>
        <count>2</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>$CH_HTTP_PORT</http_port>
    <tcp_port>$CH_TCP_PORT</tcp_port>
    <interserver_http_port>$CH_INTERSERVER_PORT</interserver_http_port>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <path>$ch/data/</path>
    <tmp_path>$ch/tmp/</tmp_path>
    <user_files_path>$ch/user_files/</user_files_path>
    <format_schema_path>$ch/format_schemas/</format_schema_path>
    <users_config>$ch/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>268435456</mark_cache_size>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <max_concurrent_queries>100</max_concurrent_queries>
    <keep_alive_timeout>3</keep_alive_timeout>
</yandex>
EOF
    cat >"$ch/users.xml" <<'EOF'
<?xml version="1.0"?>
<!-- written by engage scripts/stack.sh: user default, no password, loopback only -->
<yandex>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
            <use_uncompressed_cache>0</use_uncompressed_cache>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks>
                <ip>127.0.0.1</ip>
                <ip>::1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
EOF
}

ch_ready() {  # PORT PID
    [ "$(curl -s --max-time 2 "http://127.0.0.1:$1/ping" 2>/dev/null)" = "Ok." ] && port_owned_by "$1" "$2"
}

# ch_start: 0 ready, 2 a port taken, 1 any other failure. Ports come from
# CH_HTTP_PORT, CH_TCP_PORT and CH_INTERSERVER_PORT.
ch_start() {
    local err="$DIR/ch/log/clickhouse-server.err.log" off pid deadline
    find_clickhouse
    ch_write_config
    # A server that writes its pid file refuses to start while one exists;
    # ch_pid has said that no server of ours runs.
    rm -f "$DIR/ch/ch.pid"
    off=$(log_size "$err")
    # Run in the foreground of a new session rather than with --daemon, so
    # that the pid is known at once and a failed bind is seen as an exit.
    setsid "${CH_CMD[@]}" --config-file="$DIR/ch/config.xml" --pid-file="$DIR/ch/ch.pid" \
        </dev/null >>"$DIR/ch/log/stdout.log" 2>&1 9>&- &
    pid=$!
    deadline=$((SECONDS + READY_TIMEOUT))
    until ch_ready "$CH_HTTP_PORT" "$pid"; do
        if ! alive "$pid"; then
            if log_since "$err" "$off" | addr_in_use; then return 2; fi
            log_since "$err" "$off" | tail -n 20 >&2
            tail -n 20 "$DIR/ch/log/stdout.log" >&2
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            note "timed out after ${READY_TIMEOUT}s waiting for ClickHouse on port $CH_HTTP_PORT"
            kill -TERM "$pid" 2>/dev/null || true
            return 1
        fi
        sleep 0.05
    done
    # 18.16 writes --pid-file only with --daemon.
    [ -s "$DIR/ch/ch.pid" ] || echo "$pid" >"$DIR/ch/ch.pid"
}

ch_stop() {
    local pid
    pid=$(ch_pid) || return 0
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$STOP_TIMEOUT" "$pid"; then
        note "ClickHouse (pid $pid) did not stop in ${STOP_TIMEOUT}s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone 10 "$pid" || return 1
    fi
}

# ------------------------------------------------------------------ commands

# start_service NAME FRESH: FRESH=1 picks new ports and retries when one is
# taken; FRESH=0 reuses the saved ports (clients already know them).
start_service() {
    local name=$1 fresh=$2 try rc
    for ((try = 1; try <= PORT_TRIES; try++)); do
        if [ "$fresh" = 1 ]; then
            case $name in
            pg) PG_PORT=$(free_ports 1) ;;
            redis) REDIS_PORT=$(free_ports 1) ;;
            clickhouse) read -r CH_HTTP_PORT CH_TCP_PORT CH_INTERSERVER_PORT < <(free_ports 3) ;;
            esac
        fi
        rc=0
        case $name in
        pg) pg_start "$PG_PORT" || rc=$? ;;
        redis) redis_start "$REDIS_PORT" || rc=$? ;;
        clickhouse) ch_start || rc=$? ;;
        esac
        case $rc in
        0) return 0 ;;
        2)
            if [ "$fresh" != 1 ]; then
                note "$name: its port was taken by another process"
                return 1
            fi
            note "$name: a port was taken by another process, retrying on new ports"
            ;;
        *)
            note "$name did not start"
            return 1
            ;;
        esac
    done
    note "$name: no free port after $PORT_TRIES tries"
    return 1
}

service_running() {
    case $1 in
    pg) pg_running ;;
    redis) redis_pid >/dev/null ;;
    clickhouse) ch_pid >/dev/null ;;
    *) die "unknown service \"$1\" (pg, redis, clickhouse)" ;;
    esac
}

stop_service() {
    case $1 in
    pg) pg_stop ;;
    redis) redis_stop ;;
    clickhouse) ch_stop ;;
    *) die "unknown service \"$1\" (pg, redis, clickhouse)" ;;
    esac
}

write_env() {
    local sock
    sock=$(pg_sockdir)
    printf 'export %s=%q\n' \
        STACK_DIR "$DIR" \
        ENGAGE_PG "postgresql://postgres@127.0.0.1:$PG_PORT/engage" \
        ENGAGE_CLICKHOUSE "http://127.0.0.1:$CH_HTTP_PORT" \
        ENGAGE_REDIS "redis://127.0.0.1:$REDIS_PORT" \
        PGHOST 127.0.0.1 \
        PGPORT "$PG_PORT" \
        PGUSER postgres \
        PGDATABASE engage \
        PG_SOCKET_DIR "$sock" \
        REDIS_PORT "$REDIS_PORT" \
        CH_HTTP_PORT "$CH_HTTP_PORT" \
        CH_TCP_PORT "$CH_TCP_PORT" \
        >"$DIR/env.tmp"
    mv "$DIR/env.tmp" "$DIR/env"
}

STARTED=()
undo_started() {
    local s
    for s in "${STARTED[@]}"; do stop_service "$s" || true; done
}

cmd_up() {
    local t0=$SECONDS s
    mkdir -p "$DIR"
    # postgres (not root) must traverse DIR to reach DIR/pg.
    if is_root; then chmod go+x "$DIR"; fi
    take_lock
    load_ports
    pg_init
    for s in pg redis clickhouse; do
        if service_running "$s"; then
            note "$s already running"
            continue
        fi
        if ! start_service "$s" 1; then
            undo_started
            die "up failed; logs are under $DIR"
        fi
        STARTED+=("$s")
        save_ports
    done
    if ! pg_setup_db; then
        undo_started
        die "could not create database \"engage\""
    fi
    write_env
    note "up in $((SECONDS - t0))s"
    echo "env: $DIR/env"
    echo "ENGAGE_PG=postgresql://postgres@127.0.0.1:$PG_PORT/engage"
    echo "ENGAGE_CLICKHOUSE=http://127.0.0.1:$CH_HTTP_PORT"
    echo "ENGAGE_REDIS=redis://127.0.0.1:$REDIS_PORT"
}

cmd_down() {
    local rc=0 d
    [ -d "$DIR" ] || return 0
    take_lock
    load_ports
    ch_stop || rc=1
    redis_stop || rc=1
    pg_stop || rc=1
    rm -f "$DIR/env"
    if [ -f "$DIR/pg/sockdir" ]; then
        d=$(<"$DIR/pg/sockdir")
        case $d in /tmp/engage-pgsock.*) rm -rf "$d" ;; esac
        rm -f "$DIR/pg/sockdir"
    fi
    return $rc
}

cmd_status() {
    local s all=0
    for s in pg redis clickhouse; do
        if service_running "$s"; then echo "$s running"; else
            echo "$s stopped"
            all=1
        fi
    done
    return $all
}

# One stack.sh at a time per DIR. The servers are started with fd 9 closed,
# so they do not hold the lock.
take_lock() {
    exec 9>"$DIR/.lock"
    flock -w 300 9 || die "could not lock $DIR/.lock"
}

[ $# -ge 2 ] || usage
CMD=$1
DIR=$(realpath -m -- "$2")
case $CMD in
up) cmd_up ;;
down) cmd_down ;;
env)
    [ -f "$DIR/env" ] || die "no stack is up in $DIR"
    cat "$DIR/env"
    ;;
status) cmd_status ;;
start | stop | restart)
    [ $# -eq 3 ] || usage
    [ -d "$DIR" ] || die "no stack in $DIR"
    take_lock
    load_ports
    svc=$3
    if [ "$CMD" != start ]; then stop_service "$svc"; fi
    if [ "$CMD" != stop ]; then
        service_running "$svc" || start_service "$svc" 0 || die "$svc did not start"
    fi
    ;;
*) usage ;;
esac
