"""Each subcommand takes its own options and refuses the others (issue 9, item 4), through the
real binary: every option a subcommand's --help lists is accepted, every other option of engage
is a usage error (exit 2) that names it, and the ENGAGE_* variables and config lines of other
subcommands' options are ignored (one environment or file serves every subcommand) while a
config line naming no option is an error."""

import os
import re
import subprocess

import pytest

import lib

# The subcommands that read the shared option table (mock-api has its own options).
COMMANDS = [("run",), ("backfill",), ("dlq", "list"), ("dlq", "replay"), ("dlq", "discard"),
            ("status",), ("top",)]


def cli(*args, env=None, timeout=60):
    child = {k: v for k, v in os.environ.items() if not k.startswith("ENGAGE_")}
    child.update(env or {})
    return subprocess.run([str(lib.engage_binary()), *args], capture_output=True, text=True,
                          timeout=timeout, env=child)


def help_flags(cmd):
    """The options `engage CMD --help` lists (its lines that start with `  --`; the prose
    may name other commands' options); backfill's `--http-*` stands for run's."""
    r = cli(*cmd, "--help")
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("  --")]
    flags = set(re.findall(r"--[a-z0-9][a-z0-9-]*[a-z0-9]", "\n".join(lines))) - {"--help"}
    if "--http-*" in r.stdout:
        flags |= {f for f in help_flags(("run",)) if f.startswith("--http-")}
    return flags


@pytest.fixture(scope="module")
def own():
    return {cmd: help_flags(cmd) for cmd in COMMANDS}


def test_examples_of_foreign_options_are_usage_errors():
    for args, name in [(("status", "--clickhouse-interval-ms", "5"), "--clickhouse-interval-ms"),
                       (("top", "--http", "x"), "--http"),
                       (("top", "--http=x"), "--http"),
                       (("dlq", "discard", "--all"), "--all"),
                       (("backfill", "--slot", "s"), "--slot")]:
        r = cli(*args)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        assert r.stdout == ""
        first = r.stderr.splitlines()[0]
        assert name in first and "is not an option of engage" in first, (args, r.stderr)
        assert "usage:" in r.stderr


def test_every_listed_option_is_accepted(own):
    # `--help` after the option: the parse reaches it (exit 0, usage on stdout) only when
    # the option before it was taken. A value after a flag is left as an argument.
    for cmd, flags in own.items():
        assert flags, cmd
        for flag in sorted(flags):
            r = cli(*cmd, flag, "1", "--help")
            assert r.returncode == 0 and r.stdout.startswith("usage:"), (cmd, flag, r.stderr)


def test_every_other_option_is_refused(own):
    every = set().union(*own.values())
    for cmd, flags in own.items():
        for flag in sorted(every - flags):
            r = cli(*cmd, flag, "1", "--help")
            assert r.returncode == 2, (cmd, flag, r.returncode, r.stdout)
            assert f"{flag} is not an option of engage {' '.join(cmd)}" in r.stderr, r.stderr


def test_option_without_command_is_run_s():
    r = cli("--ids", "1")
    assert r.returncode == 2 and "--ids is not an option of engage run" in r.stderr, r.stderr


def test_other_commands_variables_and_config_lines_are_ignored(stack, db, tmp_path):
    """status on a database without the slot: exit 1 (the slot is missing), not 2, with
    run's variables and config lines around; a config line naming no option is still 2."""
    conf = tmp_path / "engage.conf"
    conf.write_text(f"pg = {db.uri}\nclickhouse-interval-ms = 5\nhttp-batch = 7\n"
                    f"redis = {stack.redis_url}\n")
    env = {"ENGAGE_CLICKHOUSE_INTERVAL_MS": "5", "ENGAGE_HTTP": "http://127.0.0.1:1",
           "ENGAGE_BATCH_MS": "x", "ENGAGE_ADMIN_ADDR": f"127.0.0.1:{lib.free_port()}"}
    r = cli("status", "--config", str(conf), env=env)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "slot engage_slot missing" in r.stdout, r.stdout

    # and the dlq reads the same file and environment
    r = cli("dlq", "list", "--config", str(conf), env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("id "), r.stdout

    conf.write_text(f"pg = {db.uri}\nno-such-option = 1\n")
    r = cli("status", "--config", str(conf), env=env)
    assert r.returncode == 2 and 'unknown option "no-such-option"' in r.stderr, r.stderr
