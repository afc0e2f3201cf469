#!/usr/bin/env bash
# Lay out the Kafka broker + Kafka Connect classpath and the Debezium
# PostgreSQL plugin directory from Maven Central, with mvn and the poms kept
# beside this script (pom.xml: Kafka 4.3.0, log4j 2.24.3; debezium/pom.xml:
# debezium-connector-postgres 3.6.1.Final).
#
#   install.sh           install when missing, then print where things are
#   install.sh --quiet   install when missing; print only when it installed
#   install.sh --home    install when missing, print KAFKA_HOME only
#
# Layout (CACHE = ${ENGAGE_CACHE:-$HOME/.cache/engage}/kafka):
#   CACHE/m2/                     mvn's private local repository
#   CACHE/dist-KEY/lib/*.jar      broker, tools, Connect, log4j (one classpath)
#   CACHE/dist-KEY/plugins/debezium-postgres/*.jar   the Connect plugin
#   CACHE/dist-KEY/.stamp         written last: the layout is complete
# KEY is a hash of the poms and of this script, so changing a version lays
# out a new directory next to the old one. A laid-out KEY is a fast no-op.
# One install at a time per CACHE (flock).
set -euo pipefail

ME=kafka/install.sh
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${ENGAGE_CACHE:-$HOME/.cache/engage}/kafka
MODE=${1:-}
case $MODE in "" | --quiet | --home) ;; *)
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac

# Kept out of the plugin directory: Connect's classpath has them, and a
# second copy in the plugin's class loader breaks the converters.
PLUGIN_EXCLUDE_GROUPS=org.apache.kafka,org.slf4j,org.apache.logging.log4j,com.fasterxml.jackson.core,com.fasterxml.jackson.datatype,com.fasterxml.jackson.module,com.fasterxml.jackson.dataformat,org.lz4,org.xerial.snappy,com.github.luben
PLUGIN_EXCLUDE_ARTIFACTS=lz4-java,jakarta.ws.rs-api  # Connect has the same versions

KEY=$(cat "$HERE/pom.xml" "$HERE/debezium/pom.xml" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-12)
HOME_DIR=$CACHE/dist-$KEY

report() {
    if [ "$MODE" = --home ]; then
        echo "$HOME_DIR"
        return
    fi
    echo "KAFKA_HOME=$HOME_DIR"
    echo "KAFKA_LIB=$HOME_DIR/lib ($(find "$HOME_DIR/lib" -name '*.jar' | wc -l) jars)"
    echo "DEBEZIUM_PLUGIN=$HOME_DIR/plugins/debezium-postgres ($(find "$HOME_DIR/plugins/debezium-postgres" -name '*.jar' | wc -l) jars)"
}

if [ -f "$HOME_DIR/.stamp" ]; then
    if [ "$MODE" != --quiet ]; then report; fi
    exit 0
fi

command -v mvn >/dev/null 2>&1 || { echo "$ME: mvn not found (run scripts/deps.sh)" >&2; exit 1; }
command -v java >/dev/null 2>&1 || { echo "$ME: java not found (run scripts/deps.sh)" >&2; exit 1; }

mkdir -p "$CACHE"
exec 8>"$CACHE/.lock"
flock -w 900 8 || { echo "$ME: could not lock $CACHE/.lock" >&2; exit 1; }
if [ -f "$HOME_DIR/.stamp" ]; then   # laid out by another install meanwhile
    if [ "$MODE" != --quiet ]; then report; fi
    exit 0
fi

t0=$SECONDS
tmp=$(mktemp -d "$CACHE/.tmp-$KEY.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mvn_copy() {  # POM OUTDIR [extra -D...]
    local pom=$1 out=$2
    shift 2
    if ! mvn -B -q -f "$pom" -Dmaven.repo.local="$CACHE/m2" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$out" "$@" \
        >"$tmp/mvn.log" 2>&1; then
        tail -n 40 "$tmp/mvn.log" >&2
        echo "$ME: mvn dependency:copy-dependencies -f $pom failed" >&2
        exit 1
    fi
}
mvn_copy "$HERE/pom.xml" "$tmp/dist/lib"
mvn_copy "$HERE/debezium/pom.xml" "$tmp/dist/plugins/debezium-postgres" \
    -DexcludeGroupIds="$PLUGIN_EXCLUDE_GROUPS" -DexcludeArtifactIds="$PLUGIN_EXCLUDE_ARTIFACTS"
[ -n "$(find "$tmp/dist/lib" -name 'kafka_2.13-*.jar')" ] || { echo "$ME: no kafka jar laid out" >&2; exit 1; }
[ -n "$(find "$tmp/dist/plugins/debezium-postgres" -name 'debezium-connector-postgres-*.jar')" ] ||
    { echo "$ME: no Debezium connector jar laid out" >&2; exit 1; }
rm -rf "$HOME_DIR"
mv "$tmp/dist" "$HOME_DIR"
date -u +%FT%TZ >"$HOME_DIR/.stamp"
if [ "$MODE" != --home ]; then echo "$ME: laid out in $((SECONDS - t0))s"; fi
report
