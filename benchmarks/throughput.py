"""Throughput: anonstream against deface on the same video, in the same run.

    python benchmarks/throughput.py [--video FILE] [--repeats 3] [--json out.json]

Each repetition runs every configuration once, in alternating order, as a
user would run it (whole command, start-up included): deface with its
defaults (full-resolution detection, CPU provider), then anonstream at
deface's detector input size and at its own default, with 1 and 2 workers.
Reports frames per second (median over repetitions), the ratio to deface,
wall and CPU time, peak memory of the largest process, and the machine.
The default video is ../shared/eval/videos/webcam_face_608x1080.mp4
(override with --video or $ANONSTREAM_EVAL pointing at the eval folder).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
# Runs one command and reports its descendants' resource use: a fresh process per run, so the
# peak memory is that run's own (RUSAGE_CHILDREN keeps the maximum over everything ever waited for).
MEASURE = (
    "import json, resource, subprocess, sys; "
    "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
    "r = resource.getrusage(resource.RUSAGE_CHILDREN); "
    "print(json.dumps({'code': code, 'cpu': r.ru_utime + r.ru_stime, 'maxrss_kb': r.ru_maxrss}))"
)
DEFAULT_EVAL = Path(os.environ.get("ANONSTREAM_EVAL", REPO.parent / "shared" / "eval"))

CONFIGS: dict[str, list[str]] = {
    "deface (CPU, full resolution)": ["deface", "--ep", "CPUExecutionProvider", "{video}", "-o", "{out}/deface.mp4"],
    "anonstream 1 worker, full resolution": ["anonstream", "run", "--workers", "1", "--max-side", "0"],
    "anonstream 2 workers, full resolution": ["anonstream", "run", "--workers", "2", "--max-side", "0"],
    "anonstream 1 worker, default": ["anonstream", "run", "--workers", "1"],
    "anonstream 2 workers, default": ["anonstream", "run", "--workers", "2"],
}


@dataclass
class Sample:
    config: str
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    fps: float


def machine() -> dict[str, object]:
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
        "provider": "CPUExecutionProvider (both tools)",
    }


def count_frames(video: Path) -> int:
    with av.open(str(video)) as container:
        return sum(1 for _ in container.decode(video=0))


def run_once(name: str, video: Path, frames: int, scratch: Path) -> Sample:
    out = scratch / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
    out.mkdir()
    argv = [a.format(video=video, out=out) for a in CONFIGS[name]]
    if argv[0] == "anonstream":
        argv = [sys.executable, "-m", "anonstream", *argv[1:], "--source", str(video), "--record", str(out), "-q"]
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", MEASURE, *argv], capture_output=True, text=True)
    wall = time.perf_counter() - start
    usage = json.loads(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else {"code": -1}
    if result.returncode != 0 or usage["code"] != 0:
        raise SystemExit(f"{name} failed ({usage['code']}):\n{result.stderr[-2000:]}")
    shutil.rmtree(out)
    return Sample(name, wall, usage["cpu"], usage["maxrss_kb"] / 1024, frames / wall)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, default=DEFAULT_EVAL / "videos" / "webcam_face_608x1080.mp4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", action="append", help="run only configurations containing this text")
    parser.add_argument("--json", type=Path, help="write every sample and the summary here")
    args = parser.parse_args()
    if not args.video.is_file():
        raise SystemExit(f"video {args.video} not found: pass --video FILE or set ANONSTREAM_EVAL")
    console = Console() if Console().is_terminal else Console(width=120)
    names = [n for n in CONFIGS if not args.only or any(o in n for o in args.only)]
    frames = count_frames(args.video)
    info = machine()
    console.print(
        f"{args.video.name}: {frames} frames; {info['cpu']}, {info['cores']} cores; "
        f"onnxruntime {info['onnxruntime']}, {info['provider']}"
    )
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="anonstream-bench-") as scratch:
        for repeat in range(args.repeats):
            order = names if repeat % 2 == 0 else names[::-1]
            for name in order:
                sample = run_once(name, args.video, frames, Path(scratch))
                samples.append(sample)
                console.print(f"  run {repeat + 1}/{args.repeats} {name}: {sample.fps:.1f} fps")
    by_config = {n: [s for s in samples if s.config == n] for n in names}
    median_fps = {n: statistics.median(s.fps for s in group) for n, group in by_config.items()}
    baseline = next((median_fps[n] for n in names if n.startswith("deface")), None)
    table = Table(title=f"throughput on {args.video.name} ({frames} frames), median of {args.repeats}")
    for column in ("configuration", "fps", "vs deface", "wall s", "CPU s", "peak MB"):
        table.add_column(column, justify="left" if column == "configuration" else "right")
    for name, group in by_config.items():
        ratio = f"{median_fps[name] / baseline:.2f}x" if baseline else "-"
        table.add_row(
            name,
            f"{median_fps[name]:.1f}",
            ratio,
            f"{statistics.median(s.wall_s for s in group):.1f}",
            f"{statistics.median(s.cpu_s for s in group):.1f}",
            f"{max(s.peak_rss_mb for s in group):.0f}",
        )
    console.print(table)
    console.print(
        "fps = frames / wall time of the whole command (start-up included); peak MB = largest single process."
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "video": str(args.video),
                    "frames": frames,
                    "median_fps": median_fps,
                    "samples": [asdict(s) for s in samples],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
