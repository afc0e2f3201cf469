#!/usr/bin/env bash
# make bench-seedstack: the brief's own stack (PostgreSQL -> Debezium on Kafka Connect ->
# Kafka -> PySpark Structured Streaming -> ClickHouse, Redis, HTTP API), end to end on
# loopback, measured at 100 and 1,000 events/s (see run.py for what and how). Bench code:
# not part of make test.
#
#   bench/seedstack/run.sh [run.py options]     e.g. --rates 100,1000 --duration 30
#
# Installs what is missing, once, under CACHE = ${ENGAGE_CACHE:-$HOME/.cache/engage}:
#   CACHE/seedstack-venv/             python3 -m venv + pip install pyspark==4.2.0 redis
#                                     requests psycopg2-binary (pyspark is ~450 MB)
#   CACHE/seedstack/jars-KEY/*.jar    mvn dependency:copy-dependencies of pom.xml (the
#                                     Kafka source for Spark 4.2.0, the PostgreSQL JDBC
#                                     driver), minus the jars pyspark already ships; given
#                                     to Spark as spark.jars, so Spark fetches nothing
#   CACHE/seedstack/m2/               mvn's private local repository
# The broker, Connect and Debezium come from scripts/kafka/install.sh (stack.sh runs it).
# Needs java 17, mvn, python3 with venv, and engage built (ENGAGE_BIN, default build/engage).
set -euo pipefail

ME=seedstack/run.sh
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${ENGAGE_CACHE:-$HOME/.cache/engage}
VENV=$CACHE/seedstack-venv
PYSPARK_VERSION=4.2.0
SYS_PY=/usr/bin/python3
[ -x "$SYS_PY" ] || SYS_PY=python3

die() { echo "$ME: $*" >&2; exit 1; }
command -v java >/dev/null 2>&1 || die "java not found (scripts/deps.sh)"
command -v mvn >/dev/null 2>&1 || die "mvn not found (scripts/deps.sh)"

mkdir -p "$CACHE/seedstack"
exec 9>"$CACHE/seedstack/.lock"
flock -w 1800 9 || die "could not lock $CACHE/seedstack/.lock"

# The virtual environment.
if [ ! -f "$VENV/.stamp-pyspark-$PYSPARK_VERSION" ]; then
    echo "$ME: creating $VENV (pyspark $PYSPARK_VERSION, about 450 MB)" >&2
    [ -x "$VENV/bin/python" ] || "$SYS_PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q "pyspark==$PYSPARK_VERSION" redis requests psycopg2-binary
    "$VENV/bin/python" -c "import pyspark, redis, requests, psycopg2; assert pyspark.__version__ == '$PYSPARK_VERSION'"
    date -u +%FT%TZ >"$VENV/.stamp-pyspark-$PYSPARK_VERSION"
fi
PYSPARK_JARS=$("$VENV/bin/python" -c "import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), 'jars'))")

# The jars Spark is given.
KEY=$(cat "$HERE/pom.xml" "${BASH_SOURCE[0]}" | { cat; echo "$PYSPARK_VERSION"; } | sha256sum | cut -c1-12)
JARS=$CACHE/seedstack/jars-$KEY
if [ ! -f "$JARS/.stamp" ]; then
    echo "$ME: laying out the Spark job's jars with mvn" >&2
    tmp=$(mktemp -d "$CACHE/seedstack/.tmp-jars.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    if ! mvn -B -q -f "$HERE/pom.xml" -Dmaven.repo.local="$CACHE/seedstack/m2" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp/jars" >"$tmp/mvn.log" 2>&1; then
        tail -n 40 "$tmp/mvn.log" >&2
        die "mvn dependency:copy-dependencies failed"
    fi
    # Drop what pyspark ships already (Scala, slf4j, Hadoop client, compression codecs):
    # one copy of each class on the driver's classpath, pyspark's.
    "$SYS_PY" - "$tmp/jars" "$PYSPARK_JARS" <<'PY'
import os, re, sys
art = lambda name: re.sub(r"-\d+(\.\d+)*([.-][A-Za-z0-9]+)*\.jar$", "", name)
have = {art(n) for n in os.listdir(sys.argv[2]) if n.endswith(".jar")}
for n in sorted(os.listdir(sys.argv[1])):
    if art(n) in have:
        os.remove(os.path.join(sys.argv[1], n))
PY
    [ -n "$(find "$tmp/jars" -name 'spark-sql-kafka-0-10_2.13-*.jar')" ] || die "no spark-sql-kafka jar laid out"
    [ -n "$(find "$tmp/jars" -name 'postgresql-*.jar')" ] || die "no PostgreSQL JDBC jar laid out"
    rm -rf "$JARS"
    mv "$tmp/jars" "$JARS"
    date -u +%FT%TZ >"$JARS/.stamp"
    rm -rf "$tmp"
    trap - EXIT
fi
echo "$ME: Spark jars: $(cd "$JARS" && ls *.jar | tr '\n' ' ')" >&2
flock -u 9

bin=${ENGAGE_BIN:-$REPO/build/engage}
exec "$VENV/bin/python" "$HERE/run.py" --jars-dir "$JARS" --bin "$bin" "$@"
