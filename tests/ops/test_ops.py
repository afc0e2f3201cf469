"""Operations checks, no servers needed: the compose file and Dockerfile, the Prometheus
alerts (promtool check and unit tests), the Grafana dashboard, the man page, and
`make install` into a temporary DESTDIR with the systemd unit it installs.

Every tool these checks use is installed by scripts/deps.sh; a missing one fails the check
(it is never skipped). Each check compares with what the contract says (issue 12, README),
and the negative tests show that the checker used catches a broken input.

Run from the repository root: python3 -m pytest -q tests/ops
The binary is $ENGAGE_BIN (default build/engage)."""

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def engage_bin():
    path = Path(os.environ.get("ENGAGE_BIN", REPO / "build" / "engage"))
    if not path.is_absolute():
        path = REPO / path
    assert path.exists(), f"engage binary not found at {path} (build it or set ENGAGE_BIN)"
    return path


def tool(name):
    path = shutil.which(name)
    assert path, f"{name} is not installed (scripts/deps.sh installs it)"
    return path


def run(args, cwd=REPO, check=True, timeout=120, env=None, input=None):
    r = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env=env, input=input,
    )
    if check:
        assert r.returncode == 0, f"{args} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r


# ---------------------------------------------------------------------------- engage --help


def help_text(*cmd):
    r = run([engage_bin(), *cmd, "--help"])
    return r.stdout


def subcommands():
    """The commands `engage --help` lists."""
    text = help_text()
    block = text.split("commands:", 1)[1]
    return {m.group(1) for m in re.finditer(r"^  ([a-z][a-z-]*) ", block, re.M)}


def flags_of(*cmd):
    return set(re.findall(r"--[a-z0-9][a-z0-9-]*", help_text(*cmd)))


def env_option(name):
    """ENGAGE_FOO_BAR -> --foo-bar (the documented rule: upper case, '-' as '_')."""
    return "--" + name[len("ENGAGE_"):].lower().replace("_", "-")


def compose_problems(config):
    """What in a parsed compose config does not exist in engage: the subcommand of every
    service that runs the engage image, each --flag it passes, and each ENGAGE_* variable
    (which must name an option of that subcommand)."""
    known = subcommands()
    problems = []
    for name, svc in config["services"].items():
        if not (svc.get("image", "").startswith("engage") or "build" in svc):
            continue
        cmd = svc.get("command") or ["run"]
        if isinstance(cmd, str):
            cmd = cmd.split()
        sub = cmd[0]
        if sub not in known:
            problems.append(f"{name}: engage has no command {sub!r}")
            continue
        flags = flags_of(sub)
        for arg in cmd[1:]:
            if arg.startswith("--") and arg.split("=", 1)[0] not in flags:
                problems.append(f"{name}: `engage {sub} --help` has no {arg}")
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) for e in env)
        for var in env:
            if var.startswith("ENGAGE_") and env_option(var) not in flags:
                problems.append(f"{name}: {var} names no option of engage {sub} ({env_option(var)})")
    return problems


# ----------------------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose_config():
    dc = tool("docker-compose")
    run([dc, "-f", REPO / "docker-compose.yml", "config", "-q"])
    r = run([dc, "-f", REPO / "docker-compose.yml", "config"])
    return yaml.safe_load(r.stdout)


def test_compose_validates_and_has_the_services(compose_config):
    services = compose_config["services"]
    for name in ("postgres", "clickhouse", "redis", "mock-api", "engage"):
        assert name in services, f"compose has no service {name}"
    pg = services["postgres"]
    assert "wal_level=logical" in pg["command"], pg["command"]
    mounts = [v if isinstance(v, str) else f"{v.get('source')}:{v.get('target')}" for v in pg["volumes"]]
    assert any("scripts/schema.sql" in m and "/docker-entrypoint-initdb.d/" in m for m in mounts), mounts
    engage = services["engage"]
    assert engage["build"]["context"] == str(REPO), engage["build"]
    assert engage["command"][0] == "run"
    # the four sinks' servers are configured for run
    env = engage["environment"]
    for var in ("ENGAGE_PG", "ENGAGE_CLICKHOUSE", "ENGAGE_REDIS", "ENGAGE_HTTP"):
        assert var in env, f"engage service has no {var}"
    assert "postgres:5432" in env["ENGAGE_PG"] and "clickhouse:8123" in env["ENGAGE_CLICKHOUSE"]
    assert "redis:6379" in env["ENGAGE_REDIS"] and "mock-api:8000" in env["ENGAGE_HTTP"]
    assert env["ENGAGE_HTTP"].endswith(":" + services["mock-api"]["command"][2].rsplit(":", 1)[1])
    # Kafka mode is built: the kafka profile has its services (checked in detail below), and
    # the comment that said it waited for Kafka mode is gone
    profiles = {p for s in services.values() for p in s.get("profiles", [])}
    assert "kafka" in profiles
    assert "waits for Kafka mode" not in (REPO / "docker-compose.yml").read_text()


def test_compose_uses_only_commands_and_flags_engage_has(compose_config):
    assert compose_problems(compose_config) == []


def test_compose_checker_catches_a_wrong_flag_and_variable(compose_config):
    bad = json.loads(json.dumps(compose_config))
    bad["services"]["engage"]["command"] = ["run", "--no-such-flag", "1"]
    bad["services"]["engage"]["environment"]["ENGAGE_NO_SUCH"] = "x"
    bad["services"]["mock-api"]["command"] = ["mock-apii"]
    problems = compose_problems(bad)
    assert any("--no-such-flag" in p for p in problems), problems
    assert any("ENGAGE_NO_SUCH" in p for p in problems), problems
    assert any("mock-apii" in p for p in problems), problems


def test_compose_config_fails_on_a_broken_file(tmp_path):
    dc = tool("docker-compose")
    text = (REPO / "docker-compose.yml").read_text()
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace("    restart: on-failure", "    restart: [on-failure"))
    r = run([dc, "-f", broken, "config", "-q"], check=False)
    assert r.returncode != 0


# ------------------------------------------------------------------ compose: Kafka mode


KAFKA_PROFILE_SERVICES = ("kafka", "engage-capture", "engage-kafka")
DEBEZIUM_CONNECTOR = REPO / "deploy" / "kafka" / "debezium-postgres.json"


def compose_profile_config(profile):
    """`docker-compose --profile P config`, validated (-q) and parsed."""
    dc = tool("docker-compose")
    args = [dc, "-f", REPO / "docker-compose.yml", "--profile", profile, "config"]
    run(args + ["-q"])
    return yaml.safe_load(run(args).stdout)


@pytest.fixture(scope="module")
def compose_kafka_config():
    return compose_profile_config("kafka")


def admin_port(cmd):
    """The port of --admin-addr in a command list."""
    return cmd[cmd.index("--admin-addr") + 1].rsplit(":", 1)[1]


def published(svc):
    """{container port: host port} of a service's ports (compose config's long or short form)."""
    out = {}
    for p in svc.get("ports", []):
        if isinstance(p, dict):
            out[str(p["target"])] = str(p["published"])
        else:
            host, _, target = p.rsplit("/", 1)[0].rpartition(":")
            out[target] = host.rsplit(":", 1)[-1]
    return out


def test_compose_kafka_profile_validates_and_has_the_services(compose_kafka_config):
    services = compose_kafka_config["services"]
    for name in KAFKA_PROFILE_SERVICES:
        assert name in services, f"the kafka profile has no service {name}"
        assert "kafka" in services[name].get("profiles", []), f"{name} is not in the kafka profile"
    # the default services stay out of any profile
    for name in ("postgres", "clickhouse", "redis", "mock-api", "engage"):
        assert not services[name].get("profiles"), f"{name} moved into a profile"

    # a single-node KRaft broker from an image users can pull
    broker = services["kafka"]
    assert broker["image"].startswith("apache/kafka:4."), broker["image"]
    benv = broker["environment"]
    assert set(benv["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    voters = benv["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert voters == [f"{benv['KAFKA_NODE_ID']}@kafka:9093"], voters
    for var in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"):
        assert benv[var] == "1", f"{var} must be 1 on one broker"
    advertised = dict(reversed(a.split("://", 1)) for a in benv["KAFKA_ADVERTISED_LISTENERS"].split(","))
    internal = next(addr for addr, name in advertised.items() if name == benv["KAFKA_INTER_BROKER_LISTENER_NAME"])
    assert "healthcheck" in broker

    capture, consumer, engage = services["engage-capture"], services["engage-kafka"], services["engage"]
    # both run the engage image the file builds
    for svc in (capture, consumer):
        assert svc["image"] == engage["image"] and svc["build"] == engage["build"]
    assert capture["command"][0] == "capture"
    assert consumer["command"][:3] == ["run", "--source", "kafka"], consumer["command"]
    cenv, kenv = capture["environment"], consumer["environment"]
    # wired to the broker, to PostgreSQL and (the consumer) to the same sinks as engage
    assert cenv["ENGAGE_KAFKA"] == kenv["ENGAGE_KAFKA"] == internal
    assert cenv["ENGAGE_PG"] == kenv["ENGAGE_PG"] == engage["environment"]["ENGAGE_PG"]
    for var in ("ENGAGE_CLICKHOUSE", "ENGAGE_REDIS", "ENGAGE_HTTP"):
        assert kenv[var] == engage["environment"][var], var
    # the consumer reads the topics capture writes
    prefix = cenv["ENGAGE_TOPIC_PREFIX"]
    assert kenv["ENGAGE_TOPIC"] == f"{prefix}.public.engagement_events"
    assert kenv["ENGAGE_CONTENT_TOPIC"] == f"{prefix}.public.content"
    assert cenv["ENGAGE_KEY"] in ("content_id", "primary")
    assert int(cenv["ENGAGE_PARTITIONS"]) >= 1
    # capture beside run: its own slot, state volume and admin port
    assert cenv.get("ENGAGE_SLOT", "engage_capture") != engage["environment"].get("ENGAGE_SLOT", "engage_slot")
    volumes = {svc: [v.split(":")[0] if isinstance(v, str) else v["source"] for v in services[svc]["volumes"]]
               for svc in ("engage", "engage-capture", "engage-kafka")}
    assert len({v[0] for v in volumes.values()}) == 3, volumes
    hosts = [published(services[s]).get(admin_port(services[s]["command"])) for s in
             ("engage", "engage-capture", "engage-kafka")]
    assert None not in hosts and len(set(hosts)) == 3, hosts
    # the image's healthcheck asks 9187; capture's own asks the port it serves
    assert f":{admin_port(capture['command'])}/healthz" in " ".join(capture["healthcheck"]["test"])
    for svc, needs in ((capture, {"postgres", "kafka"}),
                       (consumer, {"postgres", "kafka", "clickhouse", "redis", "mock-api"})):
        deps = svc["depends_on"]
        assert needs <= set(deps), deps
        assert all(deps[d]["condition"] == "service_healthy" for d in needs)


def test_compose_kafka_profile_uses_only_commands_and_flags_engage_has(compose_kafka_config):
    assert compose_problems(compose_kafka_config) == []


def test_compose_checker_catches_an_option_of_the_wrong_command(compose_kafka_config):
    """capture refuses run's consumer options and run refuses capture's: the checker knows
    which subcommand takes what."""
    bad = json.loads(json.dumps(compose_kafka_config))
    bad["services"]["engage-capture"]["environment"]["ENGAGE_GROUP"] = "g"
    bad["services"]["engage-kafka"]["command"] = ["run", "--source", "kafka", "--topic-prefix", "x"]
    problems = compose_problems(bad)
    assert any("ENGAGE_GROUP" in p and "capture" in p for p in problems), problems
    assert any("--topic-prefix" in p for p in problems), problems


def test_compose_debezium_profile_and_connector_config():
    """The debezium profile (broker, Kafka Connect, the consumer) validates, and the
    connector config it registers writes the topics the consumer reads, from a slot and
    publication of its own, keyed by content_id."""
    config = compose_profile_config("debezium")
    services = config["services"]
    for name in ("kafka", "connect", "engage-kafka"):
        assert "debezium" in services[name].get("profiles", []), name
    assert "debezium" not in services["engage-capture"].get("profiles", []), \
        "capture and Debezium would both write the same topics"
    assert "debezium/connect" in services["connect"]["image"]
    assert services["connect"]["environment"]["BOOTSTRAP_SERVERS"] == \
        services["engage-kafka"]["environment"]["ENGAGE_KAFKA"]
    connector = json.loads(DEBEZIUM_CONNECTOR.read_text())
    assert connector["connector.class"] == "io.debezium.connector.postgresql.PostgresConnector"
    assert connector["plugin.name"] == "pgoutput"
    kenv = services["engage-kafka"]["environment"]
    assert kenv["ENGAGE_TOPIC"] == connector["topic.prefix"] + ".public.engagement_events"
    assert kenv["ENGAGE_CONTENT_TOPIC"] == connector["topic.prefix"] + ".public.content"
    assert set(connector["table.include.list"].split(",")) == {"public.engagement_events", "public.content"}
    assert connector["message.key.columns"] == "public.engagement_events:content_id"
    assert connector["slot.name"] not in ("engage_slot", "engage_capture")
    assert connector["publication.name"] != "engage_pub"
    pg = services["postgres"]["environment"]
    assert connector["database.hostname"] == "postgres"
    assert connector["database.user"] == pg["POSTGRES_USER"]
    assert connector["database.dbname"] == pg["POSTGRES_DB"]
    # the URL in the compose file registers it under the name the comment gives
    text = (REPO / "docker-compose.yml").read_text()
    assert "--data @deploy/kafka/debezium-postgres.json" in text


def test_dockerfile_debian12_from_source_non_root():
    text = (REPO / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms and all(f.startswith("debian:12") for f in froms), froms
    assert re.search(r"^RUN meson setup .*\n.*ninja -C", text, re.M), "engage is not built from source"
    final = text.rsplit("\nFROM ", 1)[1]
    users = re.findall(r"^USER\s+(\S+)", final, re.M)
    assert users and users[-1] not in ("root", "0"), users
    assert re.search(r'^ENTRYPOINT \["/usr/local/bin/engage"\]', final, re.M)
    # every path it copies exists, and .dockerignore keeps the build directories out
    for src in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (REPO / src).exists(), f"Dockerfile copies {src}, which is not in the tree"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert "build*" in ignored and ".git" in ignored


# ---------------------------------------------------------------------------- Prometheus


PROM = REPO / "deploy" / "prometheus"


def source_metrics():
    """Every metric family engage registers, read from the source."""
    names = set()
    for path in (REPO / "src").rglob("*.c"):
        names.update(re.findall(
            r'eng_metrics_(?:counter|gauge|gauge_scaled|histogram)\(\s*"([a-z_:][a-z0-9_:]*)"',
            path.read_text()))
    assert len(names) > 20, names
    return names


def test_promtool_check_rules():
    r = run([tool("promtool"), "check", "rules", PROM / "alerts.yml"])
    assert "SUCCESS" in r.stdout


def test_promtool_unit_tests_pass():
    r = run([tool("promtool"), "test", "rules", "alerts_test.yml"], cwd=PROM)
    assert "SUCCESS" in r.stdout


def test_promtool_unit_tests_fail_when_an_alert_is_wrong(tmp_path):
    """The unit tests are able to fail: with the lag threshold moved, they do."""
    shutil.copy(PROM / "alerts_test.yml", tmp_path)
    alerts = (PROM / "alerts.yml").read_text()
    assert "engage_replication_lag_seconds > 60" in alerts
    (tmp_path / "alerts.yml").write_text(alerts.replace("engage_replication_lag_seconds > 60",
                                                        "engage_replication_lag_seconds > 600"))
    r = run([tool("promtool"), "test", "rules", "alerts_test.yml"], cwd=tmp_path, check=False)
    assert r.returncode != 0
    assert "EngageReplicationLagSeconds" in r.stdout + r.stderr


def test_promtool_check_config():
    run([tool("promtool"), "check", "config", PROM / "prometheus.yml"])


def test_prometheus_scrapes_every_engage_the_compose_file_runs(compose_kafka_config):
    """Each engage service with an admin port (the kafka profile's included) is a target of
    the job "engage" in the prometheus.yml the monitoring profile mounts: statically, or by
    a DNS name that resolves only while its profile runs."""
    job = next(j for j in yaml.safe_load((PROM / "prometheus.yml").read_text())["scrape_configs"]
               if j["job_name"] == "engage")
    targets = {t for sc in job.get("static_configs", []) for t in sc["targets"]}
    targets |= {f"{n}:{sd['port']}" for sd in job.get("dns_sd_configs", []) for n in sd["names"]}
    for name, svc in compose_kafka_config["services"].items():
        cmd = svc.get("command") or []
        if svc.get("image", "").startswith("engage") and "--admin-addr" in cmd:
            assert f"{name}:{admin_port(cmd)}" in targets, f"Prometheus does not scrape {name}"


def test_every_alert_has_a_unit_test_and_a_runbook():
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())["groups"][0]["rules"]
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"]
    fired = {t["alertname"] for case in tests for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    for rule in rules:
        assert rule["alert"] in fired, f"no test expects {rule['alert']} to fire"
        assert rule["annotations"].get("runbook"), f"{rule['alert']} has no runbook"
        assert rule["labels"]["severity"] in ("warning", "critical")
    # what the issue asks to be alerted on
    text = (PROM / "alerts.yml").read_text()
    for needed in ('up{job="engage"}', "engage_replication_lag_bytes", "engage_replication_lag_seconds",
                   "engage_sink_ready", "engage_sink_write_failures_total", "engage_http_retries_total",
                   "engage_dlq_parked_total", "engage_http_outbox_oldest_seconds"):
        assert needed in text, f"no alert on {needed}"


def test_alerts_name_only_metrics_engage_exports():
    known = source_metrics() | {"up"}
    text = (PROM / "alerts.yml").read_text()
    used = set(re.findall(r"\b(engage_[a-z0-9_]+)", text))
    assert used, "no engage metric in the alerts"
    assert used <= known, f"alerts use metrics engage does not export: {sorted(used - known)}"


# ------------------------------------------------------------------------------- Grafana


def dashboard_exprs():
    dash = json.loads((REPO / "deploy" / "grafana" / "engage.json").read_text())
    exprs = []
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            exprs.append(t["expr"])
    return dash, exprs


def test_dashboard_has_a_panel_for_every_metric():
    _, exprs = dashboard_exprs()
    text = "\n".join(exprs)
    missing = sorted(m for m in source_metrics() if not re.search(rf"\b{m}(_bucket|_sum|_count)?\b", text))
    assert missing == [], f"metrics with no panel: {missing}"


def test_dashboard_queries_are_valid_promql(tmp_path):
    """promtool parses every panel's query (as a recording rule), with $instance filled in."""
    _, exprs = dashboard_exprs()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": e.replace("$instance", ".*")}
        for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    run([tool("promtool"), "check", "rules", path])
    # and the check can fail
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"record": "x:y", "expr": "rate(engage_source_events_total[5m]"}]}]}))
    assert run([tool("promtool"), "check", "rules", path], check=False).returncode != 0


def test_dashboard_variables_and_ids():
    dash, _ = dashboard_exprs()
    assert dash["uid"] == "engage"
    names = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "instance"} <= names
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"


# ------------------------------------------------------------------------------ man page


MAN = REPO / "man" / "engage.1"


def test_man_page_lints_clean():
    r = run([tool("mandoc"), "-T", "lint", MAN], check=False)
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr


def test_man_lint_catches_a_broken_page(tmp_path):
    bad = tmp_path / "engage.1"
    bad.write_text(MAN.read_text().replace(".SH DESCRIPTION", ".SH DESCRIPTION\n.ZZ bogus", 1))
    assert run([tool("mandoc"), "-T", "lint", bad], check=False).returncode != 0


def test_lexgrog_reads_the_name():
    r = run([tool("lexgrog"), MAN])
    assert "engage - stream engagement events" in r.stdout, r.stdout


def test_man_renders_and_documents_every_command_and_option():
    env = dict(os.environ, MANWIDTH="100", MAN_KEEP_FORMATTING="0")
    r = run([tool("man"), "-l", MAN], env=env)
    text = re.sub(r".\x08", "", r.stdout)  # overstrike, should a pager-less man leave any
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "FILES"):
        assert re.search(rf"^{section}$", text, re.M), f"no {section} section"
    for cmd in subcommands():
        assert f"engage {cmd}" in text or f"\n       {cmd}" in text, f"{cmd} is not in the man page"
    for cmd in ("run", "backfill", "status", "capture"):
        for flag in flags_of(cmd) - {"--help"}:
            assert flag in text, f"{flag} of engage {cmd} is not in the man page"
    for flag in ("--json", "discard", "--origin", "--ids"):
        assert flag in text


def help_options(*cmd):
    """The options in the option lines of `engage CMD --help`: `--name` and short `-X`."""
    opts = set()
    for line in help_text(*cmd).splitlines():
        m = re.match(r"^ {2,}((?:-[A-Za-z], )?--[a-z0-9][a-z0-9-]*)", line)
        if m:
            opts.update(m.group(1).split(", "))
    return opts


def man_text():
    env = dict(os.environ, MANWIDTH="100", MAN_KEEP_FORMATTING="0")
    return re.sub(r".\x08", "", run([tool("man"), "-l", MAN], env=env).stdout)


def man_section(text, start, end):
    """The rendered text from the heading line start to the heading line end."""
    m = re.search(rf"^ *{re.escape(start)}$(.*?)^ *{re.escape(end)}$", text, re.M | re.S)
    assert m, f"no {start} .. {end} in the man page"
    return m.group(1)


def test_man_documents_every_option_each_command_takes():
    """Every option of every command's --help option lines (mock-api's excepted: the page
    sends to its --help) is in the rendered page, short ones included (-X)."""
    text = man_text()
    cmds = [(c,) for c in subcommands() - {"dlq", "mock-api"}] + [("dlq", s) for s in ("list", "replay", "discard")]
    assert ("capture",) in cmds
    seen = set()
    for cmd in cmds:
        for opt in help_options(*cmd) - {"--help"}:
            seen.add(opt)
            pat = rf"(?<![\w-]){re.escape(opt)}(?![\w-])"
            assert re.search(pat, text), f"{opt} of engage {' '.join(cmd)} is not in the man page"
    assert {"-X", "--kafka-property", "--topic-prefix", "--snapshot-reads"} <= seen, seen


def test_man_option_check_catches_a_missing_option(tmp_path, monkeypatch):
    """With capture's --partitions taken out of the page, the check above fails."""
    src = MAN.read_text()
    assert "\\-\\-partitions" in src
    bad = tmp_path / "engage.1"
    bad.write_text(src.replace("\\-\\-partitions", "\\-\\-parts"))
    monkeypatch.setattr(sys.modules[__name__], "MAN", bad)
    with pytest.raises(AssertionError, match="--partitions of engage capture"):
        test_man_documents_every_option_each_command_takes()


def test_man_gives_capture_defaults_as_its_help_does():
    """Each default `engage capture --help` states is in the page's capture options."""
    section = man_section(man_text(), "Options of capture", "KAFKA MODE")
    defaults = re.findall(r"^ {2,}(?:-X, )?(--[a-z-]+).*?\(default ([^\s;,)]+)", help_text("capture"), re.M)
    assert len(defaults) >= 10, defaults
    for opt, default in defaults:
        assert default in section, f"capture's {opt} default {default} is not in the man page"
    for default in ("engage_capture", "./engage-capture-state", "127.0.0.1:9188", "dbserver1"):
        assert default in section


def test_man_documents_kafka_mode():
    text = man_text()
    assert re.search(r"^ *engage run --source kafka --kafka BOOTSTRAP --pg CONNINFO", text, re.M)
    assert re.search(r"^ *engage capture --pg CONNINFO --kafka BOOTSTRAP", text, re.M)
    assert re.search(r"^ *engage status --pg CONNINFO \[--source pg\|kafka\]", text, re.M)
    env = man_section(text, "ENVIRONMENT", "FILES")
    for var in ("ENGAGE_KAFKA", "ENGAGE_GROUP", "ENGAGE_TOPIC", "ENGAGE_CONTENT_TOPIC",
                "ENGAGE_TOPIC_PREFIX", "ENGAGE_KEY", "ENGAGE_PARTITIONS"):
        assert re.search(rf"\b{var}\b", env), f"{var} is not in ENVIRONMENT"
        # and it is a variable capture or run really reads
        opt = env_option(var)
        assert opt in flags_of("capture") | flags_of("run"), opt
    files = man_section(text, "FILES", "DEAD LETTERS")
    assert "STATE_DIR/SLOT.snapshot" in files and "./engage-capture-state" in files
    metrics = man_section(text, "METRICS", "SIGNALS")
    kafka_metrics = {m for m in source_metrics() if m.startswith(("engage_kafka_", "engage_capture_"))}
    assert len(kafka_metrics) >= 8, kafka_metrics
    for m in sorted(kafka_metrics):
        assert re.search(rf"\b{m}\b", metrics), f"metric {m} is not in METRICS"
    assert re.search(r"^ *engage capture --pg", man_section(text, "EXAMPLES", "SEE ALSO"), re.M)


# -------------------------------------------------------------------- make install, systemd


def test_make_install_destdir_and_uninstall(tmp_path):
    build = engage_bin().parent
    dest = tmp_path / "stage"
    run(["make", "-s", "install", f"DESTDIR={dest}", f"BUILD={build}"], timeout=600)
    expected = {
        "usr/local/bin/engage": 0o755,
        "usr/local/share/man/man1/engage.1": 0o644,
        "usr/local/lib/systemd/system/engage.service": 0o644,
        "usr/local/lib/sysusers.d/engage.conf": 0o644,
        "usr/local/share/doc/engage/engage.env.example": 0o644,
        "usr/local/share/engage/prometheus/alerts.yml": 0o644,
        "usr/local/share/engage/prometheus/prometheus.yml": 0o644,
        "usr/local/share/engage/grafana/engage.json": 0o644,
    }
    found = {str(p.relative_to(dest)): stat.S_IMODE(p.stat().st_mode) for p in dest.rglob("*") if p.is_file()}
    assert found == expected
    assert run([dest / "usr/local/bin/engage", "--help"]).stdout.startswith("engage:")
    assert (dest / "usr/local/share/man/man1/engage.1").read_bytes() == MAN.read_bytes()

    unit = (dest / "usr/local/lib/systemd/system/engage.service").read_text()
    assert "@BINDIR@" not in unit
    assert re.search(r"^ExecStart=/usr/local/bin/engage run ", unit, re.M), unit
    for directive in ("User=engage", "ProtectSystem=strict", "StateDirectory=engage",
                      "Restart=on-failure", "EnvironmentFile=/etc/engage/engage.env",
                      "NoNewPrivileges=yes", "KillSignal=SIGTERM"):
        assert re.search(rf"^{re.escape(directive)}$", unit, re.M), f"unit lacks {directive}"
    sysusers = (dest / "usr/local/lib/sysusers.d/engage.conf").read_text()
    assert re.search(r"^u engage ", sysusers, re.M)

    # PREFIX moves everything, and the unit follows the binary
    dest2 = tmp_path / "stage2"
    run(["make", "-s", "install", f"DESTDIR={dest2}", "PREFIX=/opt/engage", f"BUILD={build}"], timeout=600)
    unit2 = (dest2 / "opt/engage/lib/systemd/system/engage.service").read_text()
    assert re.search(r"^ExecStart=/opt/engage/bin/engage run ", unit2, re.M)
    assert (dest2 / "opt/engage/bin/engage").exists()

    run(["make", "-s", "uninstall", f"DESTDIR={dest}"])
    left = [str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()]
    assert left == []


def verify_unit(unit_text, tmp_path, binary):
    """systemd-analyze verify on a copy of the unit whose ExecStart names binary; returns
    (exit code, output)."""
    d = tmp_path / "unit"
    d.mkdir(exist_ok=True)
    path = d / "engage.service"
    path.write_text(re.sub(r"^ExecStart=\S+", f"ExecStart={binary}", unit_text, flags=re.M))
    r = run([tool("systemd-analyze"), "verify", "--man=no", path], check=False)
    return r.returncode, (r.stdout + r.stderr).strip(), path


def test_systemd_unit_verifies_and_is_hardened(tmp_path):
    unit = (REPO / "deploy" / "systemd" / "engage.service.in").read_text()
    code, out, path = verify_unit(unit, tmp_path, engage_bin())
    # verify only warns about most mistakes: its output must be empty as well
    assert code == 0 and out == "", out
    r = run([tool("systemd-analyze"), "security", "--offline=yes", path], check=False)
    m = re.search(r"Overall exposure level for engage.service: ([0-9.]+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.0, f"exposure {m.group(1)}:\n{r.stdout}"


def test_systemd_verify_catches_a_bad_directive(tmp_path):
    unit = (REPO / "deploy" / "systemd" / "engage.service.in").read_text()
    code, out, _ = verify_unit(unit.replace("ProtectSystem=strict", "ProtectSystem=strictest"),
                               tmp_path, engage_bin())
    assert code != 0 or out != ""
