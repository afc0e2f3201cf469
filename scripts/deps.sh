#!/usr/bin/env bash
# Install what engage needs to build and test, and only what is missing.
#
# Idempotent: a second run installs nothing and prints nothing. Prints one
# line per thing it installed. Runs as root on a clean Debian 12 machine (CI
# runs it from a fresh clone); as another user it goes through sudo.
#
# Installing a server package must not leave a system service running: the
# tests start their own servers on free ports (scripts/stack.sh), so while
# apt runs, a policy-rc.d that denies every start is put in place (unless one
# is already there) and removed afterwards.
set -euo pipefail

DEB_PACKAGES=(
    build-essential pkg-config meson ninja-build
    libpq-dev postgresql postgresql-contrib
    libhiredis-dev redis-server
    libcurl4-openssl-dev libmicrohttpd-dev libjansson-dev libcmocka-dev librdkafka-dev
    clickhouse-server clickhouse-client
    curl valgrind
    faketime  # tests/e2e/test_clock.py: engage with its clock shifted
    kcat      # Kafka mode: the stack's readiness check, the e2e tests' producer and consumer
    # operations checks (tests/ops): promtool, compose validation, man page lint, unit verify
    prometheus docker-compose mandoc man-db systemd
)

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
        echo "deps.sh: not root and no sudo: cannot install packages" >&2
        exit 1
    }
    SUDO=(sudo)
fi

deb_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# The python that runs the tests: Debian's (/usr/bin/python3) takes Debian's
# packages (pip is refused there, PEP 668); any other (pyenv, a venv) takes
# pip packages, because Debian's python3-* modules are not on its path.
system_python=false
if ! command -v python3 >/dev/null 2>&1; then
    DEB_PACKAGES+=(python3)
    system_python=true
elif [ "$(python3 -c 'import sys; print(sys.prefix)')" = /usr ]; then
    system_python=true
fi
if $system_python; then
    DEB_PACKAGES+=(python3-pytest python3-psycopg2 python3-redis python3-yaml)
fi

# Kafka, Connect and Debezium run on the machine's Java 17 and come through
# mvn (scripts/kafka/install.sh). Java and Maven are installed only when
# missing, and with --no-upgrade: an install must never upgrade the JDK.
JAVA_PACKAGES=()
command -v java >/dev/null 2>&1 || JAVA_PACKAGES+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null 2>&1 || JAVA_PACKAGES+=(maven)

missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
    deb_installed "$pkg" || missing+=("$pkg")
done

if [ "${#missing[@]}" -gt 0 ] || [ "${#JAVA_PACKAGES[@]}" -gt 0 ]; then
    policy=/usr/sbin/policy-rc.d
    own_policy=false
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# written by engage scripts/deps.sh for the time of an install\nexit 101\n' |
            "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy"
        own_policy=true
    fi
    cleanup() { if $own_policy; then "${SUDO[@]}" rm -f "$policy"; fi; }
    trap cleanup EXIT

    "${SUDO[@]}" apt-get update -qq >/dev/null
    if [ "${#missing[@]}" -gt 0 ]; then
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends --no-upgrade "${missing[@]}" >/dev/null
    fi
    if [ "${#JAVA_PACKAGES[@]}" -gt 0 ]; then
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends --no-upgrade "${JAVA_PACKAGES[@]}" >/dev/null
        for pkg in "${JAVA_PACKAGES[@]}"; do echo "installed deb: $pkg"; done
    fi
    for pkg in "${missing[@]}"; do
        deb_installed "$pkg" || { echo "deps.sh: package \"$pkg\" did not install" >&2; exit 1; }
        echo "installed deb: $pkg"
    done
fi

if ! $system_python; then
    pip_missing=()
    python3 -c 'import pytest' 2>/dev/null || pip_missing+=(pytest)
    python3 -c 'import psycopg2' 2>/dev/null || pip_missing+=(psycopg2-binary)
    python3 -c 'import redis' 2>/dev/null || pip_missing+=(redis)
    python3 -c 'import yaml' 2>/dev/null || pip_missing+=(pyyaml)
    python3 -c 'import lizard' 2>/dev/null || pip_missing+=(lizard) # tests/ops: function size
    if [ "${#pip_missing[@]}" -gt 0 ]; then
        PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check "${pip_missing[@]}"
        for p in "${pip_missing[@]}"; do echo "installed pip: $p"; done
    fi
fi

# lizard (function length and complexity, tests/ops/test_structure.py) is on PyPI only.
if $system_python && ! python3 -c 'import lizard' 2>/dev/null; then
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
        --break-system-packages lizard && echo "installed pip: lizard"
fi

python3 -c 'import pytest, psycopg2, redis, yaml, lizard' || {
    echo "deps.sh: python3 still cannot import pytest, psycopg2, redis, yaml and lizard" >&2
    exit 1
}

# The Kafka broker, Kafka Connect and the Debezium PostgreSQL plugin (jars
# from Maven Central, under ${ENGAGE_CACHE:-$HOME/.cache/engage}/kafka):
# silent when already laid out.
bash "$(dirname "${BASH_SOURCE[0]}")/kafka/install.sh" --quiet
