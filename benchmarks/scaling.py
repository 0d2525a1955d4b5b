"""Scaling: how many live streams the worker pool anonymizes on this machine without dropping a frame.

    python benchmarks/scaling.py [--size 640x360] [--fps 30] [--seconds 10] [--workers 2] [--max-streams 16]

Makes one synthetic clip (W x H at F fps: the real face of skimage's
astronaut photo moving and growing across the frame), then runs K copies of
it as K live streams (`anonstream run --source CLIP x K --realtime
--record-format null`), for K = 1, 2, 3, ... until a run drops or loses
frames, and --overload more beyond it (the workers then drop the oldest
frames, so latency should stay bounded). Reports every K's frames, drops and
end-to-end latency percentiles (worst stream), and the largest K that ran without a drop and with p99
latency within --max-p99-ms (a pool that keeps up only by queueing is not
live), and the machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import RESULTS, anonstream_run, console, describe, machine, write_json
from rich.table import Table

from anonstream.demo import AstronautClip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="640x360", help="W x H of each stream")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each stream")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-streams", type=int, default=16)
    parser.add_argument("--max-p99-ms", type=float, default=150.0, help="latency budget, end to end")
    parser.add_argument("--overload", type=int, default=1, help="runs past the first that drops (how overload looks)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="anonstream config override")
    parser.add_argument("--json", type=Path, help="default: benchmarks/results/scaling-<size>.json")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    info = machine()
    out = console()
    rows = []
    best = overloaded = 0
    workers: list[str] = []
    with tempfile.TemporaryDirectory(prefix="anonstream-scaling-") as scratch:
        clip = AstronautClip(width=width, height=height, frames=round(args.seconds * args.fps), fps=args.fps)
        path = clip.write(Path(scratch) / f"synthetic_{width}x{height}.mp4")
        for streams in range(1, args.max_streams + 1):
            argv = [arg for _ in range(streams) for arg in ("--source", str(path))]
            argv += ["--realtime", "--record-format", "null", "--workers", str(args.workers)]
            argv += [f"--set={a}" for a in args.set]
            measured, written = anonstream_run(argv, Path(scratch), f"{streams} streams")
            summary, workers = written["streams"], written["workers"]
            dropped = sum(int(s["dropped"]) for s in summary)
            lost = sum(int(s["lost"]) for s in summary)
            worst = [max(s["latency_ms"]["end to end"][i] for s in summary) for i in range(3)]
            rows.append(
                {
                    "streams": streams,
                    "frames_in": sum(int(s["frames_in"]) for s in summary),
                    "frames_out": sum(int(s["frames_out"]) for s in summary),
                    "dropped": dropped,
                    "lost": lost,
                    "end_to_end_ms_worst_stream": worst,
                    "cpu_s": measured.cpu_s,
                    "wall_s": measured.wall_s,
                }
            )
            out.print(f"  {streams} streams: {dropped} dropped, {lost} lost, p99 {worst[2]:.1f} ms")
            overloaded = overloaded + 1 if dropped or lost else 0
            if overloaded > args.overload:
                break
            if not overloaded and worst[2] <= args.max_p99_ms and best == streams - 1:
                best = streams
    table = Table(
        title=f"{args.size} streams at {args.fps} fps, live-paced, {args.workers} workers, null recorder; "
        f"{describe(info)}"
    )
    for column in ("streams", "frames in", "out", "dropped", "lost", "p50 ms", "p95 ms", "p99 ms", "CPU s / s"):
        table.add_column(column, justify="right")
    for row in rows:
        p50, p95, p99 = row["end_to_end_ms_worst_stream"]
        table.add_row(
            str(row["streams"]),
            str(row["frames_in"]),
            str(row["frames_out"]),
            str(row["dropped"]),
            str(row["lost"]),
            f"{p50:.1f}",
            f"{p95:.1f}",
            f"{p99:.1f}",
            f"{row['cpu_s'] / row['wall_s']:.2f}",
        )
    out.print(table)
    out.print(f"workers: {'; '.join(workers)}")
    out.print(
        f"largest number of {args.size}@{args.fps} streams with no dropped frame and p99 <= "
        f"{args.max_p99_ms:g} ms: {best} (latency: end to end, worst stream)"
    )
    target = args.json or RESULTS / f"scaling-{args.size}.json"
    write_json(
        target,
        {
            "machine": info,
            "size": args.size,
            "fps": args.fps,
            "workers": args.workers,
            "max_p99_ms": args.max_p99_ms,
            "max_streams_live": best,
            "runs": rows,
        },
    )
    out.print(f"figures written to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
