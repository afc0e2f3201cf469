#!/usr/bin/env python3
"""The module layering of src/ (docs/architecture.md), checked over #include lines: a file
may include its own module's headers and those of the modules listed for it, nothing else.
Exits 1 naming every include that breaks it."""

import re
import sys
from pathlib import Path

ALLOWED = {
    "core": set(),                       # the base: errors, buffers, log, metrics, clocks, files
    "db": {"core"},                      # libpq connections and error classification
    "decode": {"core", "enrich"},        # pgoutput bytes and Debezium JSON -> messages; no I/O
                                         # (enrich only for the row types eng_text, eng_content)
    "enrich": {"core"},                  # row -> enriched event; the content cache
    "dlq": {"core", "db"},               # the dead-letter table
    "checkpoint": {"core"},              # save, then acknowledge, the durable position
    "sink": {"core", "dlq"},             # ClickHouse, Redis, HTTP, stdout
    "pipeline": {"core", "sink", "dlq"},  # queues, lanes, the durable position
    "source": {"core", "db", "decode", "enrich", "dlq", "pipeline", "sink", "checkpoint"},
    "admin": {"core"},                   # /metrics, /healthz, /readyz
    "mockapi": {"core"},                 # the stand-in API
    "cli": {"core", "db", "decode", "enrich", "dlq", "sink", "pipeline", "source", "admin",
            "mockapi", "checkpoint"},
}

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def main(root):
    src = Path(root) / "src"
    bad = []
    for path in sorted(src.rglob("*.[ch]")):
        module = path.relative_to(src).parts[0]
        if module not in ALLOWED:
            bad.append(f"{path}: module {module!r} is not in scripts/check_layers.py")
            continue
        for inc in INCLUDE.findall(path.read_text()):
            target = (path.parent / inc).resolve()
            try:
                other = target.relative_to(src.resolve()).parts[0]
            except ValueError:
                bad.append(f"{path}: includes {inc}, outside src/")
                continue
            if other != module and other not in ALLOWED[module]:
                bad.append(f"{path}: {module} must not include {other} ({inc})")
    for line in bad:
        print(line)
    print(f"check_layers: {len(bad)} violation(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent))
