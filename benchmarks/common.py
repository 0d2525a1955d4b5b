"""What every benchmark shares: where the evaluation data is, the machine it ran on, how a command is measured."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import onnxruntime as ort
from rich.console import Console

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
EVAL = Path(os.environ.get("ANONSTREAM_EVAL", REPO.parent / "shared" / "eval"))
# the console script users run (`python -m anonstream` from the checkout would import the bare folder)
ANONSTREAM = [str(Path(sys.executable).with_name("anonstream"))]

# Runs one command and reports its descendants' resource use: a fresh process per run, so the
# peak memory is that run's own (RUSAGE_CHILDREN keeps the maximum over everything ever waited for).
_MEASURE = (
    "import json, resource, subprocess, sys; "
    "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True); "
    "r = resource.getrusage(resource.RUSAGE_CHILDREN); "
    "sys.stderr.write(code.stderr); "
    "print(json.dumps({'code': code.returncode, 'cpu': r.ru_utime + r.ru_stime, 'maxrss_kb': r.ru_maxrss}))"
)


@dataclass(frozen=True)
class Measured:
    wall_s: float
    cpu_s: float
    peak_rss_mb: float


def measure(argv: list[str], what: str) -> Measured:
    """Run a whole command as a user would; exit with its error output if it fails."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", _MEASURE, *argv], capture_output=True, text=True)
    wall = time.perf_counter() - start
    lines = result.stdout.strip().splitlines()
    usage = json.loads(lines[-1]) if lines else {"code": -1}
    if result.returncode != 0 or usage["code"] != 0:
        raise SystemExit(f"{what} failed (exit {usage['code']}): {' '.join(argv)}\n{result.stderr[-3000:]}")
    return Measured(wall, usage["cpu"], usage["maxrss_kb"] / 1024)


def machine() -> dict[str, object]:
    """The CPU, core count and onnxruntime build: every figure is printed with these."""
    cpu = platform.processor() or "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "providers available": ort.get_available_providers(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    }


def describe(info: dict[str, object]) -> str:
    return f"{info['date']}; {info['cpu']}, {info['cores']} cores; onnxruntime {info['onnxruntime']}"


def console() -> Console:
    """Wide enough for the tables when the output goes to a file."""
    return Console() if Console().is_terminal else Console(width=130)


def need(path: Path, what: str) -> Path:
    if not path.exists():
        raise SystemExit(
            f"{what} {path} not found: pass its path, or set ANONSTREAM_EVAL to the folder holding the "
            "evaluation data (by default ../shared/eval beside the checkout)"
        )
    return path


def write_json(path: Path, payload: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def anonstream_run(args: list[str], scratch: Path, what: str) -> tuple[Measured, dict[str, Any]]:
    """`anonstream run ARGS` as a user runs it; its --summary-json: "workers" (what they ran on), "streams"."""
    summary = scratch / "summary.json"
    summary.unlink(missing_ok=True)
    measured = measure([*ANONSTREAM, "run", *args, "--summary-json", str(summary), "-q"], what)
    written: dict[str, Any] = json.loads(summary.read_text(encoding="utf-8"))
    return measured, written
