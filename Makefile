# engage: the README's commands. Meson does the building; this file only wires steps.
#   make          build ./build/engage (release-ish: -O2 -g)
#   make demo     install what is missing, build, start a local stack, stream sample events
#   make test     install what is missing, build with ASan+UBSan and with TSan, run every test
#                 (unit, fuzz targets for a bounded time, valgrind, TSan, end-to-end)
#   make bench    the benchmarks in bench/ (figures printed, baseline in the same run)
#   make install  the binary, man page, systemd unit, sysusers entry, alerts and dashboard
#                 under PREFIX (/usr/local), staged under DESTDIR when set; make uninstall

BUILD      ?= build
ASAN_BUILD ?= build-asan
TSAN_BUILD ?= build-tsan
SAN_FLAGS  := -fno-sanitize-recover=all -fno-omit-frame-pointer

.PHONY: all build asan tsan fuzz deps demo test unit e2e bench clean format install uninstall

PREFIX         ?= /usr/local
BINDIR         ?= $(PREFIX)/bin
MANDIR         ?= $(PREFIX)/share/man
DATADIR        ?= $(PREFIX)/share/engage
DOCDIR         ?= $(PREFIX)/share/doc/engage
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR    ?= $(PREFIX)/lib/sysusers.d
INSTALLED      := $(BINDIR)/engage $(MANDIR)/man1/engage.1 $(SYSTEMDUNITDIR)/engage.service \
                  $(SYSUSERSDIR)/engage.conf $(DOCDIR)/engage.env.example \
                  $(DATADIR)/prometheus/alerts.yml $(DATADIR)/prometheus/prometheus.yml \
                  $(DATADIR)/grafana/engage.json

all: build

deps:
	@bash scripts/deps.sh

$(BUILD)/build.ninja:
	meson setup $(BUILD) --buildtype=debugoptimized

$(ASAN_BUILD)/build.ninja:
	meson setup $(ASAN_BUILD) --buildtype=debug -Db_sanitize=address,undefined \
	    -Db_lundef=false -Dc_args="$(SAN_FLAGS)" -Dc_link_args="$(SAN_FLAGS)"

$(TSAN_BUILD)/build.ninja:
	meson setup $(TSAN_BUILD) --buildtype=debug -Db_sanitize=thread -Db_lundef=false

build: $(BUILD)/build.ninja
	ninja -C $(BUILD)

asan: $(ASAN_BUILD)/build.ninja
	ninja -C $(ASAN_BUILD)

tsan: $(TSAN_BUILD)/build.ninja
	ninja -C $(TSAN_BUILD)

demo: deps build
	@bash scripts/demo.sh $(BUILD)/engage

# the same through Kafka: engage capture -> a KRaft broker -> engage run --source kafka
.PHONY: demo-kafka
demo-kafka: deps build
	@bash scripts/demo_kafka.sh $(BUILD)/engage

test: deps build asan tsan
	@TSAN_BUILD=$(TSAN_BUILD) bash scripts/test.sh $(ASAN_BUILD)

unit: asan
	meson test -C $(ASAN_BUILD) --no-suite fuzz --print-errorlogs

fuzz: asan
	meson test -C $(ASAN_BUILD) --suite fuzz --print-errorlogs

e2e: asan
	ENGAGE_BIN=$(ASAN_BUILD)/engage python3 -m pytest -q tests/e2e

bench: deps build
	@bash bench/run.sh $(BUILD)

# the brief's own stack (Debezium -> Kafka -> PySpark) measured end to end; not in make test
.PHONY: bench-seedstack
bench-seedstack: deps build
	@ENGAGE_BIN=$(BUILD)/engage bash bench/seedstack/run.sh

# engage against the brief's stack: the same workload into both, on the same servers
.PHONY: bench-compare
bench-compare: deps build
	@ENGAGE_BIN=$(BUILD)/engage python3 bench/compare.py

# The unit names the binary where it is installed (BINDIR, without DESTDIR).
install: build
	install -D -m 0755 $(BUILD)/engage $(DESTDIR)$(BINDIR)/engage
	install -D -m 0644 man/engage.1 $(DESTDIR)$(MANDIR)/man1/engage.1
	install -d -m 0755 $(DESTDIR)$(SYSTEMDUNITDIR)
	sed 's|@BINDIR@|$(BINDIR)|g' deploy/systemd/engage.service.in >$(DESTDIR)$(SYSTEMDUNITDIR)/engage.service.tmp
	chmod 0644 $(DESTDIR)$(SYSTEMDUNITDIR)/engage.service.tmp
	mv $(DESTDIR)$(SYSTEMDUNITDIR)/engage.service.tmp $(DESTDIR)$(SYSTEMDUNITDIR)/engage.service
	install -D -m 0644 deploy/systemd/engage.sysusers $(DESTDIR)$(SYSUSERSDIR)/engage.conf
	install -D -m 0644 deploy/systemd/engage.env.example $(DESTDIR)$(DOCDIR)/engage.env.example
	install -D -m 0644 deploy/prometheus/alerts.yml $(DESTDIR)$(DATADIR)/prometheus/alerts.yml
	install -D -m 0644 deploy/prometheus/prometheus.yml $(DESTDIR)$(DATADIR)/prometheus/prometheus.yml
	install -D -m 0644 deploy/grafana/engage.json $(DESTDIR)$(DATADIR)/grafana/engage.json

uninstall:
	rm -f $(addprefix $(DESTDIR),$(INSTALLED))
	rmdir $(DESTDIR)$(DATADIR)/prometheus $(DESTDIR)$(DATADIR)/grafana $(DESTDIR)$(DATADIR) \
	    $(DESTDIR)$(DOCDIR) 2>/dev/null || true

format:
	clang-format -i src/*/*.c src/*/*.h tests/unit/*.c

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(TSAN_BUILD)
