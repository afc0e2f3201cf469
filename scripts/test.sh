#!/usr/bin/env bash
# Runs the whole suite against the ASan+UBSan build in $1: the cmocka unit tests through
# meson, the fuzz targets for a bounded time each (meson suite 'fuzz', $FUZZ_SECONDS, default
# 5), the unit tests again under valgrind (release build) and under ThreadSanitizer
# ($TSAN_BUILD, default build-tsan, when it is set up: make test does), then the end-to-end
# tests (pytest) against real servers that the suite starts on loopback in a temporary
# directory and stops afterwards. Ends with one summary line.
set -u
build=${1:-build-asan}
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export ENGAGE_BIN="$top/$build/engage"
logdir=$(mktemp -d /tmp/engage-test.XXXXXX)

# "ok fail" from a meson test log; a meson that ran nothing counts as one failure.
meson_counts() {
    local ok fail
    ok=$(grep -Eo '^Ok: +[0-9]+' "$1" | grep -Eo '[0-9]+' || echo 0)
    fail=$(grep -Eo '^(Fail|Timeout): +[0-9]+' "$1" | awk '{s += $2} END {print s + 0}')
    if [ "$ok" = 0 ] && [ "$fail" = 0 ]; then fail=1; fi
    echo "$ok $fail"
}

echo "== unit tests (cmocka, ASan+UBSan)"
meson test -C "$build" --no-suite fuzz --print-errorlogs 2>&1 | tee "$logdir/unit.log"
read -r unit_ok unit_fail < <(meson_counts "$logdir/unit.log")

# Every parser of outside input, fuzzed for a bounded time each under ASan+UBSan
# (tests/fuzz); a failing input is saved in $build/tests/fuzz/crash-*.
echo "== fuzz targets (ASan+UBSan, ${FUZZ_SECONDS:-5} s each)"
meson test -C "$build" --suite fuzz --print-errorlogs 2>&1 | tee "$logdir/fuzz.log"
read -r fuzz_ok fuzz_fail < <(meson_counts "$logdir/fuzz.log")

# The same unit tests on the release build under valgrind (memcheck: invalid accesses and
# definite leaks fail a test); make test builds the release build and deps.sh installs
# valgrind.
vg_ok=0 vg_fail=0
if [ -f "$top/build/build.ninja" ] && command -v valgrind >/dev/null; then
    echo "== unit tests (cmocka, valgrind, release build)"
    meson test -C "$top/build" --no-suite fuzz --print-errorlogs --timeout-multiplier 10 \
        --wrap='valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite --quiet' \
        2>&1 | tee "$logdir/valgrind.log"
    read -r vg_ok vg_fail < <(meson_counts "$logdir/valgrind.log")
fi

# The unit tests once more under ThreadSanitizer: the pipeline's lanes, the admin server and
# the metrics are hand-written threading. A data race or a lock-order inversion fails the
# test (halt_on_error; TSan's exit code otherwise).
tsan_build=${TSAN_BUILD:-build-tsan}
tsan_ok=0 tsan_fail=0
if [ -f "$top/$tsan_build/build.ninja" ]; then
    echo "== unit tests (cmocka, ThreadSanitizer)"
    TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1} \
        meson test -C "$top/$tsan_build" --no-suite fuzz --print-errorlogs --timeout-multiplier 5 \
        2>&1 | tee "$logdir/tsan.log"
    read -r tsan_ok tsan_fail < <(meson_counts "$logdir/tsan.log")
fi

echo "== end-to-end tests (pytest, real PostgreSQL, ClickHouse, Redis)"
python3 -m pytest -v -rfE -p no:cacheprovider --junitxml="$logdir/e2e.xml" tests/e2e 2>&1 \
    | tee "$logdir/e2e.log"
echo "== operations checks (tests/ops: compose, promtool, dashboard, man page, make install)"
python3 -m pytest -v -rfE -p no:cacheprovider --junitxml="$logdir/ops.xml" tests/ops 2>&1 \
    | tee "$logdir/ops.log"
# Counted with the e2e tests: passed, failed (a suite that did not run counts as one), skipped.
read -r e2e_pass e2e_fail e2e_skip < <(python3 - "$logdir/e2e.xml" "$logdir/ops.xml" <<'PY'
import sys, xml.etree.ElementTree as ET
tp = tf = ts = 0
for path in sys.argv[1:]:
    try:
        root = ET.parse(path).getroot()
    except Exception:
        tf += 1; continue
    suites = [root] if root.tag == "testsuite" else list(root)
    t = sum(int(s.get("tests", 0)) for s in suites)
    f = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    s = sum(int(s.get("skipped", 0)) for s in suites)
    tp += t - f - s; tf += f if t else 1; ts += s
print(tp, tf, ts)
PY
)
passed=$((unit_ok + fuzz_ok + vg_ok + tsan_ok + e2e_pass))
failed=$((unit_fail + fuzz_fail + vg_fail + tsan_fail + e2e_fail))
echo
echo "unit: $unit_ok passed, $unit_fail failed; fuzz: $fuzz_ok passed, $fuzz_fail failed;" \
    "valgrind: $vg_ok passed, $vg_fail failed; tsan: $tsan_ok passed, $tsan_fail failed;" \
    "e2e and ops: $e2e_pass passed, $e2e_fail failed, $e2e_skip skipped"
echo "$passed passed, $failed failed, $e2e_skip skipped"
[ "$failed" = 0 ]
