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

import numpy as np
import onnxruntime as ort
from rich.console import Console

from anonstream.stream.detections import iou_matrix
from anonstream.stream.tracker import overlap_of_smaller

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


def anonstream_run(
    args: list[str], scratch: Path, what: str, command: list[str] = ANONSTREAM
) -> tuple[Measured, dict[str, Any]]:
    """`anonstream run ARGS` as a user runs it (``command``: another build's); its --summary-json: "workers"
    (what they ran on), "streams"."""
    summary = scratch / "summary.json"
    summary.unlink(missing_ok=True)
    measured = measure([*command, "run", *args, "--summary-json", str(summary), "-q"], what)
    written: dict[str, Any] = json.loads(summary.read_text(encoding="utf-8"))
    return measured, written


GHOST_OVERLAP = 0.1  # a held box overlaps a detection when they share this much of the smaller box
LOOK_BACK = 75  # frames searched for the detection a held box came from (the longest default hold and follow)


def tracking_measures(jsonl: Path) -> dict[str, Any]:
    """Ghost boxes and held-box growth from anonstream's per-frame JSONL (frames in order of seq).

    The JSONL does not say which detection a held box came from: its source is taken to be the
    detection of its class, within LOOK_BACK frames, that it overlaps best (intersection over
    union), so that a small detection it happens to touch (a plate's part, another face) is not
    taken for it.
    """
    records = sorted(
        (r for r in map(json.loads, jsonl.read_text(encoding="utf-8").splitlines()) if "detected" in r),
        key=lambda r: r["seq"],
    )
    ghosts, ghost_frames, held_total, worst, worst_at = 0, [], 0, 0.0, None
    for index, record in enumerate(records):
        for label, boxes in record["tracked"].items():
            held = np.asarray(boxes, np.float64).reshape(-1, 4)
            held_total += len(held)
            found = np.asarray(record["detected"].get(label, []), np.float64).reshape(-1, 4)
            if len(found):
                beside = (overlap_of_smaller(held, found) >= GHOST_OVERLAP).any(axis=1)
                ghosts += int(beside.sum())
                if beside.any():
                    ghost_frames.append(record["seq"])
            earlier = [r["detected"].get(label, []) for r in records[max(0, index - LOOK_BACK) : index]]
            sources = np.asarray([box for boxes in earlier for box in boxes], np.float64).reshape(-1, 4)
            if not len(held) or not len(sources):
                continue
            best = iou_matrix(held, sources)
            for box, row in zip(held, best, strict=True):
                if row.max() > 0:
                    source = sources[int(row.argmax())]
                    ratio = float(((box[2:] - box[:2]) / np.maximum(source[2:] - source[:2], 1e-9)).max())
                    if ratio > worst:
                        worst, worst_at = ratio, record["seq"]
    return {
        "frames": len(records),
        "held_boxes": held_total,
        "ghost_boxes": ghosts,
        "ghost_frames": ghost_frames[:50],
        "largest_growth": worst,
        "largest_growth_at": worst_at,
    }
