"""Every benchmark script still imports and parses its arguments against the current package
(a refactor that moves a name a benchmark uses fails here, not months later in a long run)."""

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

# One child process runs every script's --help (importing torch once, not once per script).
_CHILD = """
import contextlib, io, runpy, sys
sys.path.insert(0, sys.argv[1])
for script in sys.argv[2:]:
    sys.argv = [script, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(script, run_name="__main__")
    except SystemExit as done:
        if done.code not in (0, None) or "usage:" not in out.getvalue():
            raise SystemExit(f"{script}: exit {done.code}")
    else:
        raise SystemExit(f"{script}: --help did not exit")
"""


def test_every_benchmark_script_starts():
    scripts = sorted(str(p) for p in BENCHMARKS.glob("*.py") if "__main__" in p.read_text())
    assert len(scripts) >= 8
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(BENCHMARKS), *scripts],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
