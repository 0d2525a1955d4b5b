"""Latency of a live source: a video paced at its own frame rate, as a camera delivers it.

    python benchmarks/latency.py [VIDEO ...] [--workers 2] [--repeats 1] [--json FILE]

Runs `anonstream run --source VIDEO --realtime --record DIR` (MP4 recording
included, as users run it) and reports, per video, frames in / out / dropped /
lost and the p50 / p95 / p99 latency of every stage and end to end (capture
to recorded), from the run's own --summary-json. With --realtime, a worker
that falls behind drops the oldest frames rather than queue them, so dropped
frames are the price of keeping latency bounded: the target is none.
Default videos: hamilton_640x360.mp4 and webcam_face_608x1080.mp4 from
../shared/eval/videos (or $ANONSTREAM_EVAL/videos).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import EVAL, RESULTS, anonstream_run, console, describe, machine, need, write_json
from rich.table import Table

DEFAULT_VIDEOS = [EVAL / "videos" / "hamilton_640x360.mp4", EVAL / "videos" / "webcam_face_608x1080.mp4"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("videos", type=Path, nargs="*", default=DEFAULT_VIDEOS)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="runs per video (each reported)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="anonstream config override")
    parser.add_argument("--json", type=Path, default=RESULTS / "latency.json")
    args = parser.parse_args()
    info = machine()
    out = console()
    runs = []
    with tempfile.TemporaryDirectory(prefix="anonstream-latency-") as scratch:
        for video in args.videos:
            need(video, "video")
            for repeat in range(args.repeats):
                argv = ["--source", str(video), "--realtime", "--record", str(Path(scratch) / f"out{repeat}")]
                argv += ["--workers", str(args.workers)] + [f"--set={a}" for a in args.set]
                _, summary = anonstream_run(argv, Path(scratch), f"anonstream on {video.name}")
                stream = summary["streams"][0]
                runs.append({"video": video.name, "repeat": repeat + 1, "workers": summary["workers"], **stream})
                out.print(
                    f"  {video.name} run {repeat + 1}: {stream['frames_out']}/{stream['frames_in']} frames, "
                    f"{stream['dropped']} dropped, end to end p99 {stream['latency_ms']['end to end'][2]:.1f} ms"
                )
    table = Table(title=f"latency, live-paced (--realtime), {args.workers} workers; {describe(info)}")
    table.add_column("video / stage")
    for column in ("frames in", "out", "dropped", "lost", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(column, justify="right")
    for run in runs:
        latency = run["latency_ms"]
        name = f"{run['video']}" + (f" (run {run['repeat']})" if args.repeats > 1 else "")
        e2e = latency["end to end"]
        table.add_row(
            name,
            str(run["frames_in"]),
            str(run["frames_out"]),
            str(run["dropped"]),
            str(run["lost"]),
            *(f"{v:.1f}" for v in e2e),
            style="bold",
        )
        for stage, (p50, p95, p99) in latency.items():
            if stage != "end to end":
                table.add_row(f"  {stage}", "", "", "", "", f"{p50:.1f}", f"{p95:.1f}", f"{p99:.1f}")
        table.add_section()
    out.print(table)
    out.print(f"workers: {'; '.join(runs[0]['workers'])}")
    write_json(args.json, {"machine": info, "workers": args.workers, "overrides": args.set, "runs": runs})
    out.print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
