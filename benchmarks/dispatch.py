"""What credit-based dispatch costs against an earlier build (round robin), in the same run, alternating.

    python benchmarks/dispatch.py --baseline OLD/bin/anonstream [--repeats 3] [--json FILE]

The baseline is another install's console script, for instance round robin's last commit:

    git worktree add /tmp/rr 70a4700 && python -m venv --system-site-packages /tmp/rr-venv
    /tmp/rr-venv/bin/pip install --no-deps -e /tmp/rr

Two runs per build and repetition, `anonstream run` with 2 workers and the default detectors:
- a file, lossless (webcam_face_608x1080.mp4): frames per second over the whole command;
- a live stream (hamilton_640x360.mp4 with --realtime): frames recorded, dropped, and the end-to-end
  latency percentiles from the summary.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from common import ANONSTREAM, EVAL, RESULTS, anonstream_run, console, describe, machine, need, write_json
from rich.table import Table


def _run(anonstream: list[str], video: Path, live: bool, scratch: Path) -> dict[str, Any]:
    args = ["--source", str(video), "--record", str(scratch / "out"), "--overwrite", "--workers", "2"]
    args += ["--realtime"] if live else []
    measured, summary = anonstream_run(args, scratch, " ".join(anonstream), anonstream)
    (stream,) = summary["streams"]
    p50, _, p99 = stream["latency_ms"]["end to end"]
    fps = stream["frames_out"] / measured.wall_s
    return {"fps": fps, "out": stream["frames_out"], "dropped": stream["dropped"], "lost": stream["lost"]} | {
        "p50_ms": p50,
        "p99_ms": p99,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="another build's `anonstream` console script")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=RESULTS / "dispatch.json")
    options = parser.parse_args()
    builds = {"baseline": [str(need(options.baseline, "baseline"))], "this build": ANONSTREAM}
    videos = {
        "file, lossless": (need(EVAL / "videos" / "webcam_face_608x1080.mp4", "video"), False),
        "live, --realtime": (need(EVAL / "videos" / "hamilton_640x360.mp4", "video"), True),
    }
    results: dict[str, dict[str, list[dict[str, Any]]]] = {v: {b: [] for b in builds} for v in videos}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(options.repeats):
            order = list(builds) if repeat % 2 == 0 else list(builds)[::-1]
            for case, (video, live) in videos.items():
                for build in order:
                    results[case][build].append(_run(builds[build], video, live, Path(scratch)))
    info = machine()
    table = Table(title=f"credits against {options.baseline}, median of {options.repeats}; {describe(info)}")
    for column in ("case", "build", "fps", "frames out", "dropped", "lost", "p50 ms", "p99 ms", "fps / baseline"):
        table.add_column(column, justify="left" if column in ("case", "build") else "right")
    medians: dict[str, dict[str, dict[str, float]]] = {}
    for case, per_build in results.items():
        medians[case] = {
            build: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
            for build, runs in per_build.items()
        }
        for build, m in medians[case].items():
            ratio = m["fps"] / medians[case]["baseline"]["fps"]
            row = [f"{m['fps']:.2f}", f"{m['out']:.0f}", f"{m['dropped']:.0f}", f"{m['lost']:.0f}"]
            table.add_row(case, build, *row, f"{m['p50_ms']:.0f}", f"{m['p99_ms']:.0f}", f"{ratio:.2f}")
    console().print(table)
    write_json(options.json, {"machine": info, "baseline": str(options.baseline), "runs": results, "median": medians})


if __name__ == "__main__":
    main()
