#!/usr/bin/env bash
# make bench: every benchmark against the release build in $1 (default build). Each starts its
# own servers on loopback and prints its figures beside a baseline measured in the same run.
set -euo pipefail
build=${1:-build}
here=$(cd "$(dirname "$0")" && pwd)
bin="$here/../$build/engage"
echo "== backlog: 1,000,000 events already in WAL"
python3 "$here/backlog.py" --bin "$bin"
for extra in backfill.py freshness.py seen_memory.py kafka.py; do
    if [ -f "$here/$extra" ]; then
        echo
        echo "== ${extra%.py}"
        python3 "$here/$extra" --bin "$bin"
    fi
done
