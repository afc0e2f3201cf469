#!/usr/bin/env bash
# The servers engage's tests and demo run against: PostgreSQL 15
# (wal_level=logical), Redis 7 and ClickHouse, on 127.0.0.1, on free ports,
# with every file (data, logs, sockets, pid files) under DIR.
#
#   stack.sh up DIR                  start what is not running; write DIR/env
#   stack.sh down DIR                stop everything; safe to call twice
#   stack.sh env DIR                 print DIR/env (shell-sourceable)
#   stack.sh status DIR              one line per service; exit 1 unless all run
#   stack.sh up DIR kafka [connect]  the same, and a Kafka broker (KRaft,
#                                    broker+controller in one JVM), and Kafka
#                                    Connect standalone with the Debezium
#                                    PostgreSQL plugin (connect implies kafka);
#                                    DIR/env gains KAFKA_BOOTSTRAP=127.0.0.1:PORT
#                                    and CONNECT_URL=http://127.0.0.1:PORT
#   stack.sh start|stop|restart DIR SERVICE
#                                    one service (pg, redis, clickhouse, kafka,
#                                    connect), on the port it had: for outage
#                                    and restart tests (kafka and connect get
#                                    new ports the first time they start in DIR;
#                                    starting connect starts kafka if it is down)
#
# Kafka and Connect run from jars laid out by scripts/kafka/install.sh (run by
# scripts/deps.sh; stack.sh runs it too, a no-op once laid out), on the
# machine's Java 17 with -Xmx512m each; files under DIR/kafka and DIR/connect.
# Connect starts with no connector: tests add them through its REST API.
# status lists kafka and connect, and fails for them only if asked for in DIR
# (by up or start) since the last down.
#
# Several stacks may run at once (other engineers, CI): ports come from the
# kernel (bind to port 0) and a start that loses a race for its port retries
# on new ones. Only processes whose pid file lives in DIR, and that are
# checked to be the ones started there, are ever signalled.
#
# Knobs: STACK_READY_TIMEOUT (s, default 60), STACK_STOP_TIMEOUT (s, default
# 60), STACK_JAVA_READY_TIMEOUT (s, kafka and connect, default 180), PG_BIN
# (default /usr/lib/postgresql/15/bin), JAVA (default java),
# ENGAGE_CACHE (where install.sh lays out the jars).
set -euo pipefail

ME=stack.sh
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
READY_TIMEOUT=${STACK_READY_TIMEOUT:-60}
STOP_TIMEOUT=${STACK_STOP_TIMEOUT:-60}
# A JVM on a loaded 2-core machine takes 4 s to 20 s to be ready.
JAVA_READY_TIMEOUT=${STACK_JAVA_READY_TIMEOUT:-180}
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
    KAFKA_PORT='' KAFKA_CONTROLLER_PORT='' CONNECT_PORT=''
    if [ -f "$DIR/ports" ]; then
        # shellcheck disable=SC1091
        . "$DIR/ports"
    fi
}

save_ports() {
    printf 'PG_PORT=%s\nREDIS_PORT=%s\nCH_HTTP_PORT=%s\nCH_TCP_PORT=%s\nCH_INTERSERVER_PORT=%s\n' \
        "$PG_PORT" "$REDIS_PORT" "$CH_HTTP_PORT" "$CH_TCP_PORT" "$CH_INTERSERVER_PORT" \
        >"$DIR/ports.tmp"
    printf 'KAFKA_PORT=%s\nKAFKA_CONTROLLER_PORT=%s\nCONNECT_PORT=%s\n' \
        "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$CONNECT_PORT" >>"$DIR/ports.tmp"
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

# ------------------------------------------------- Kafka (KRaft) and Connect

# The jars come from scripts/kafka/install.sh (a fast no-op once laid out;
# it downloads from Maven Central when they are missing).
KAFKA_HOME=''
kafka_home() {
    [ -n "$KAFKA_HOME" ] && return 0
    KAFKA_HOME=$(bash "$SCRIPT_DIR/kafka/install.sh" --home) || die "scripts/kafka/install.sh failed"
}

# java_pid NAME CONF: the pid in DIR/NAME/NAME.pid, if that process runs
# with CONF on its command line (so a recycled pid is never taken for ours).
java_pid() {
    local pid
    [ -s "$DIR/$1/$1.pid" ] || return 1
    pid=$(<"$DIR/$1/$1.pid")
    alive "$pid" && tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF "$2" || return 1
    echo "$pid"
}
kafka_pid() { java_pid kafka "$DIR/kafka/server.properties"; }
connect_pid() { java_pid connect "$DIR/connect/worker.properties"; }

# java_run NAME MAIN ARGS...: start a JVM of the stack in a new session, its
# output appended to DIR/NAME/NAME.log; sets JAVA_PID.
java_run() {
    local name=$1
    shift
    setsid "${JAVA:-java}" -Xmx512m -XX:+UseG1GC -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$SCRIPT_DIR/kafka/log4j2.properties" \
        -cp "$KAFKA_HOME/lib/*" "$@" \
        </dev/null >>"$DIR/$name/$name.log" 2>&1 9>&- &
    JAVA_PID=$!
    echo "$JAVA_PID" >"$DIR/$name/$name.pid"
}

# A Kafka cluster id is 16 random bytes in unpadded URL-safe base64 (what
# kafka.tools.StorageTool random-uuid prints), made here without a JVM start;
# Kafka refuses ids that start with "-".
kafka_cluster_id() {
    "$PY" -c '
import base64, os
while True:
    s = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
    if not s.startswith("-"):
        print(s)
        break
'
}

# One process is broker and controller. The controller quorum is static
# (controller.quorum.voters), so a restart on new ports after a lost race
# needs no re-format.
kafka_write_config() {
    mkdir -p "$DIR/kafka/data"
    cat >"$DIR/kafka/server.properties" <<EOF
# written by engage scripts/stack.sh on each start
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DIR/kafka/data
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
}

kafka_format() {
    [ -s "$DIR/kafka/data/meta.properties" ] && return 0
    if ! "${JAVA:-java}" -Xmx256m -Dlog4j2.configurationFile="$SCRIPT_DIR/kafka/log4j2.properties" \
        -cp "$KAFKA_HOME/lib/*" kafka.tools.StorageTool format \
        -t "$(kafka_cluster_id)" -c "$DIR/kafka/server.properties" \
        </dev/null >"$DIR/kafka/format.log" 2>&1; then
        tail -n 20 "$DIR/kafka/format.log" >&2
        note "could not format Kafka's storage (log: $DIR/kafka/format.log)"
        return 1
    fi
}

# kafka_ready PORT PID: the broker on PORT (held by PID) answers a metadata
# request and lists itself.
kafka_ready() {
    port_owned_by "$1" "$2" &&
        timeout 10 kcat -L -b "127.0.0.1:$1" -m 3 2>/dev/null | grep -q ' 1 brokers:'
}

# java_wait NAME PID READY_CMD...: wait for READY_CMD; 0 ready, 2 a port
# taken, 1 any other failure.
java_wait() {
    local name=$1 pid=$2 off=$3 log="$DIR/$1/$1.log" deadline
    shift 3
    deadline=$((SECONDS + JAVA_READY_TIMEOUT))
    until "$@"; do
        if ! alive "$pid"; then
            if log_since "$log" "$off" | addr_in_use; then return 2; fi
            log_since "$log" "$off" | grep -vE '^\s+at ' | tail -n 20 >&2
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            note "timed out after ${JAVA_READY_TIMEOUT}s waiting for $name (log: $log)"
            kill -TERM "$pid" 2>/dev/null || true
            return 1
        fi
        sleep 0.1
    done
}

# kafka_start: 0 ready, 2 a port taken, 1 any other failure. Ports come from
# KAFKA_PORT and KAFKA_CONTROLLER_PORT.
kafka_start() {
    local off
    command -v kcat >/dev/null 2>&1 || die "kcat not found (run scripts/deps.sh)"
    kafka_home
    kafka_write_config
    kafka_format || return 1
    off=$(log_size "$DIR/kafka/kafka.log")
    java_run kafka kafka.Kafka "$DIR/kafka/server.properties"
    java_wait kafka "$JAVA_PID" "$off" kafka_ready "$KAFKA_PORT" "$JAVA_PID"
}

# Connect standalone: no connectors at start (tests add them through the
# REST API; a standalone worker forgets them when it stops, its source
# offsets stay in DIR/connect/offsets). plugin.discovery=service_load skips
# the classpath scan (8 s).
connect_write_config() {
    mkdir -p "$DIR/connect"
    cat >"$DIR/connect/worker.properties" <<EOF
# written by engage scripts/stack.sh on each start
bootstrap.servers=127.0.0.1:$KAFKA_PORT
listeners=http://127.0.0.1:$CONNECT_PORT
rest.advertised.host.name=127.0.0.1
rest.advertised.port=$CONNECT_PORT
key.converter=org.apache.kafka.connect.json.JsonConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
key.converter.schemas.enable=true
value.converter.schemas.enable=true
offset.storage.file.filename=$DIR/connect/offsets
offset.flush.interval.ms=1000
plugin.path=$KAFKA_HOME/plugins
plugin.discovery=service_load
EOF
}

connect_ready() {  # PORT PID
    port_owned_by "$1" "$2" &&
        curl -sf --max-time 2 "http://127.0.0.1:$1/" >/dev/null 2>&1 &&
        curl -sf --max-time 2 "http://127.0.0.1:$1/connector-plugins" 2>/dev/null |
        grep -qF '"io.debezium.connector.postgresql.PostgresConnector"'
}

connect_start() {
    local off
    kafka_home
    kafka_pid >/dev/null || {
        note "connect needs the broker: start kafka first"
        return 1
    }
    connect_write_config
    off=$(log_size "$DIR/connect/connect.log")
    java_run connect org.apache.kafka.connect.cli.ConnectStandalone "$DIR/connect/worker.properties"
    java_wait connect "$JAVA_PID" "$off" connect_ready "$CONNECT_PORT" "$JAVA_PID"
}

# java_stop NAME PIDFUNC: TERM (a clean shutdown), KILL after STOP_TIMEOUT.
java_stop() {
    local pid
    pid=$($2) || return 0
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$STOP_TIMEOUT" "$pid"; then
        note "$1 (pid $pid) did not stop in ${STOP_TIMEOUT}s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone 10 "$pid" || return 1
    fi
}
kafka_stop() { java_stop kafka kafka_pid; }
connect_stop() { java_stop connect connect_pid; }

# DIR/extras: the optional services (kafka, connect) asked for in this DIR
# since the last down; status counts them, down forgets them.
extras_add() {
    local s have=''
    [ -f "$DIR/extras" ] && have=$(<"$DIR/extras")
    for s in "$@"; do
        case " $have " in *" $s "*) ;; *) have="${have:+$have }$s" ;; esac
    done
    echo "$have" >"$DIR/extras"
}
extras() { if [ -f "$DIR/extras" ]; then cat "$DIR/extras"; fi; }

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
            kafka) read -r KAFKA_PORT KAFKA_CONTROLLER_PORT < <(free_ports 2) ;;
            connect) CONNECT_PORT=$(free_ports 1) ;;
            esac
        fi
        rc=0
        case $name in
        pg) pg_start "$PG_PORT" || rc=$? ;;
        redis) redis_start "$REDIS_PORT" || rc=$? ;;
        clickhouse) ch_start || rc=$? ;;
        kafka) kafka_start || rc=$? ;;
        connect) connect_start || rc=$? ;;
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
    kafka) kafka_pid >/dev/null ;;
    connect) connect_pid >/dev/null ;;
    *) die "unknown service \"$1\" (pg, redis, clickhouse, kafka, connect)" ;;
    esac
}

stop_service() {
    case $1 in
    pg) pg_stop ;;
    redis) redis_stop ;;
    clickhouse) ch_stop ;;
    kafka) kafka_stop ;;
    connect) connect_stop ;;
    *) die "unknown service \"$1\" (pg, redis, clickhouse, kafka, connect)" ;;
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
    if kafka_pid >/dev/null; then
        printf 'export %s=%q\n' KAFKA_BOOTSTRAP "127.0.0.1:$KAFKA_PORT" >>"$DIR/env.tmp"
    fi
    if connect_pid >/dev/null; then
        printf 'export %s=%q\n' CONNECT_URL "http://127.0.0.1:$CONNECT_PORT" >>"$DIR/env.tmp"
    fi
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
    if [ "${#EXTRAS[@]}" -gt 0 ]; then extras_add "${EXTRAS[@]}"; fi
    for s in pg redis clickhouse "${EXTRAS[@]}"; do
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
    if kafka_pid >/dev/null; then echo "KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT"; fi
    if connect_pid >/dev/null; then echo "CONNECT_URL=http://127.0.0.1:$CONNECT_PORT"; fi
}

cmd_down() {
    local rc=0 d
    [ -d "$DIR" ] || return 0
    take_lock
    load_ports
    connect_stop || rc=1
    kafka_stop || rc=1
    ch_stop || rc=1
    redis_stop || rc=1
    pg_stop || rc=1
    rm -f "$DIR/env" "$DIR/extras"
    if [ -f "$DIR/pg/sockdir" ]; then
        d=$(<"$DIR/pg/sockdir")
        case $d in /tmp/engage-pgsock.*) rm -rf "$d" ;; esac
        rm -f "$DIR/pg/sockdir"
    fi
    return $rc
}

cmd_status() {
    local s all=0 wanted
    wanted=" pg redis clickhouse $(extras) "
    for s in pg redis clickhouse kafka connect; do
        if service_running "$s"; then echo "$s running"; else
            echo "$s stopped"
            case $wanted in *" $s "*) all=1 ;; esac
        fi
    done
    return $all
}

# start_one SERVICE (start, restart): start it on the ports it had. kafka and
# connect get new ports the first time they start in DIR, and are noted in
# DIR/extras and DIR/env once they run.
start_one() {
    local svc=$1 fresh=0
    service_running "$svc" && return 0
    if [ "$svc" = kafka ] && [ -z "$KAFKA_PORT" ]; then fresh=1; fi
    if [ "$svc" = connect ] && [ -z "$CONNECT_PORT" ]; then fresh=1; fi
    start_service "$svc" "$fresh" || die "$svc did not start"
    case $svc in
    kafka | connect)
        save_ports
        extras_add "$svc"
        if [ -f "$DIR/env" ]; then write_env; fi
        ;;
    esac
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
EXTRAS=()
case $CMD in
up)
    shift 2
    for s in "$@"; do
        case $s in
        kafka) ;;
        connect) [[ " $* " == *" kafka "* ]] || EXTRAS+=(kafka) ;;
        *) usage ;;
        esac
        EXTRAS+=("$s")
    done
    # kafka before connect, whatever the order given
    if [[ " ${EXTRAS[*]-} " == *" connect "* ]]; then EXTRAS=(kafka connect); elif [ "${#EXTRAS[@]}" -gt 0 ]; then EXTRAS=(kafka); fi
    cmd_up
    ;;
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
        # connect needs the broker: start it too (on its port) if it is down
        if [ "$svc" = connect ]; then start_one kafka; fi
        start_one "$svc"
    fi
    ;;
*) usage ;;
esac
