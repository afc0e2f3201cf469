# engage: the README's commands. Meson does the building; this file only wires steps.
#   make          build ./build/engage (release-ish: -O2 -g)
#   make demo     install what is missing, build, start a local stack, stream sample events
#   make test     install what is missing, build with ASan+UBSan, run every test
#   make bench    the benchmarks in bench/ (figures printed, baseline in the same run)

BUILD      ?= build
ASAN_BUILD ?= build-asan
SAN_FLAGS  := -fno-sanitize-recover=all -fno-omit-frame-pointer

.PHONY: all build asan deps demo test unit e2e bench clean format

all: build

deps:
	@bash scripts/deps.sh

$(BUILD)/build.ninja:
	meson setup $(BUILD) --buildtype=debugoptimized

$(ASAN_BUILD)/build.ninja:
	meson setup $(ASAN_BUILD) --buildtype=debug -Db_sanitize=address,undefined \
	    -Db_lundef=false -Dc_args="$(SAN_FLAGS)" -Dc_link_args="$(SAN_FLAGS)"

build: $(BUILD)/build.ninja
	ninja -C $(BUILD)

asan: $(ASAN_BUILD)/build.ninja
	ninja -C $(ASAN_BUILD)

demo: deps build
	@bash scripts/demo.sh $(BUILD)/engage

test: deps build asan
	@bash scripts/test.sh $(ASAN_BUILD)

unit: asan
	meson test -C $(ASAN_BUILD) --print-errorlogs

e2e: asan
	ENGAGE_BIN=$(ASAN_BUILD)/engage python3 -m pytest -q tests/e2e

bench: deps build
	@bash bench/run.sh $(BUILD)

format:
	clang-format -i src/*/*.c src/*/*.h tests/unit/*.c

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
