"""Issue 9: the module layering of src/ (docs/architecture.md) holds, checked over the
#include lines by scripts/check_layers.py, and the check fails on a file that breaks it."""

import shutil
import subprocess
import sys
from pathlib import Path

TOP = Path(__file__).resolve().parents[2]
CHECK = TOP / "scripts" / "check_layers.py"


def run_check(root):
    return subprocess.run([sys.executable, str(CHECK), str(root)], capture_output=True, text=True)


def test_layers_hold():
    r = run_check(TOP)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 violation(s)" in r.stdout


def test_layer_check_catches_a_sink_including_the_pipeline(tmp_path):
    shutil.copytree(TOP / "src", tmp_path / "src")
    bad = tmp_path / "src" / "sink" / "redis.c"
    bad.write_text('#include "../pipeline/pipeline.h"\n' + bad.read_text())
    core = tmp_path / "src" / "core" / "log.c"
    core.write_text('#include "../source/pg.h"\n' + core.read_text())
    r = run_check(tmp_path)
    assert r.returncode == 1, r.stdout
    assert "sink must not include pipeline" in r.stdout
    assert "core must not include source" in r.stdout


def test_no_function_over_80_lines_or_complexity_25():
    """Issue 9, item 3: lizard over src/ finds no function longer than 80 lines or with a
    cyclomatic complexity over 25 (scripts/deps.sh installs lizard)."""
    r = subprocess.run([sys.executable, "-m", "lizard", "-w", "-L", "80", "-C", "25", str(TOP / "src")],
                       capture_output=True, text=True)
    warnings = [line for line in r.stdout.splitlines() if "warning:" in line]
    assert not warnings, "\n".join(warnings)
    assert r.returncode == 0, r.stdout + r.stderr
