"""Soak: live streams for minutes on end; memory, drops and latency minute by minute.

    python benchmarks/soak.py [--minutes 10] [--streams 1] [--size 640x360] [--fps 30] [--workers 2] [--source URL]

Plays a synthetic clip of --minutes (skimage's astronaut, a real face,
moving) paced at its frame rate (`anonstream run --realtime`, MP4 recording
included), as --streams live streams, or reads --source (an rtsp:// camera)
for that long. Every
--sample-s it reads the resident memory of each anonstream process from
/proc. At the end it reports per minute: frames recorded, dropped, lost,
p50 / p95 / p99 end-to-end latency (from the run's --metrics-jsonl), and the
memory at the minute's end; then how much memory grew after the first
minute (warm-up). A leak shows as steady growth; the target is flat.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from common import ANONSTREAM, RESULTS, console, describe, machine, write_json
from rich.table import Table

from anonstream.demo import AstronautClip


def _tree(root: int) -> list[int]:
    """``root`` and all its descendants, from /proc."""
    parents: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            parents[ppid].append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += parents.get(pid, [])
    return found


def _rss_by_role(root: int) -> dict[str, float]:
    """Resident memory in MB per process, keyed by its title ("anonstream: worker 1"...)."""
    out: dict[str, float] = {}
    for pid in _tree(root):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
        except OSError:
            continue
        rss = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        if title.startswith("anonstream: "):
            role = title.removeprefix("anonstream: ")
        else:
            role = "orchestrator" if pid == root else f"other {pid}"
        out[role] = out.get(role, 0.0) + rss / 1024
    return out


@dataclass
class Minute:
    minute: int
    latency_ms: list[float] = field(default_factory=list)  # end to end, of each frame recorded
    dropped: int = 0
    lost: int = 0
    rss_mb: float | None = None  # all anonstream processes, at the minute's end

    def percentiles(self) -> list[float]:
        """End-to-end p50, p95, p99 in ms."""
        if not self.latency_ms:
            return [float("nan")] * 3
        return [float(v) for v in np.percentile(self.latency_ms, (50, 95, 99))]

    def row(self) -> dict[str, object]:
        return {
            "minute": self.minute,
            "frames_out": len(self.latency_ms),
            "dropped": self.dropped,
            "lost": self.lost,
            "end_to_end_ms": self.percentiles(),
            "rss_mb": self.rss_mb,
        }


@dataclass(frozen=True)
class Sample:
    t_s: float
    rss_mb: dict[str, float]

    @property
    def total_mb(self) -> float:
        return sum(self.rss_mb.values())


def _per_minute(jsonl: Path, fps: float) -> list[Minute]:
    """Frames, drops and losses per minute of the stream, from the run's --metrics-jsonl."""
    minutes: dict[int, Minute] = {}
    start: int | None = None
    with jsonl.open(encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if "stamps_ns" in record:
                captured = record["stamps_ns"]["captured"]
                start = captured if start is None else start
                index = int((captured - start) / 60e9)
            else:  # a drop or a run of lost frames: placed by its sequence number
                index = int(record["seq"] / fps / 60)
            minute = minutes.setdefault(index, Minute(index + 1))
            if "stamps_ns" in record:
                minute.latency_ms.append(record["latency_ms"])
            elif "dropped_by" in record:
                minute.dropped += 1
            else:
                minute.lost += record["lost"]
    return [minutes[k] for k in sorted(minutes)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--size", default="640x360", help="W x H of the synthetic stream")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--streams", type=int, default=1, help="copies of the synthetic stream, played at once")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--source", help="a live source (rtsp://...) instead of the synthetic clip")
    parser.add_argument("--sample-s", type=float, default=5.0, help="how often memory is read")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="anonstream config override")
    parser.add_argument("--json", type=Path, default=RESULTS / "soak.json")
    args = parser.parse_args()
    info = machine()
    out = console()
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="anonstream-soak-") as scratch_dir:
        scratch = Path(scratch_dir)
        if args.source:
            source, live = args.source, []
        else:
            frames = round(args.minutes * 60 * args.fps)
            out.print(f"writing a {args.minutes:g}-minute {args.size}@{args.fps} clip ({frames} frames)...")
            clip = AstronautClip(width=width, height=height, frames=frames, fps=args.fps)
            source, live = str(clip.write(scratch / "soak.mp4")), ["--realtime"]
        jsonl, summary_path = scratch / "frames.jsonl", scratch / "summary.json"
        sources = [arg for _ in range(1 if args.source else args.streams) for arg in ("--source", source)]
        argv = [*ANONSTREAM, "run", *sources, *live, "--record", str(scratch / "out")]
        argv += ["--workers", str(args.workers), "--metrics-jsonl", str(jsonl), "--summary-json", str(summary_path)]
        argv += [f"--set={a}" for a in args.set] + ["-q"]
        out.print(f"running for {args.minutes:g} min: {' '.join(argv)}")
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        started = time.monotonic()
        samples: list[Sample] = []
        while process.poll() is None:
            elapsed = time.monotonic() - started
            if args.source and elapsed >= args.minutes * 60:
                process.send_signal(signal.SIGINT)  # a camera never ends: stop it like a user, with Ctrl-C
            samples.append(Sample(round(elapsed, 1), _rss_by_role(process.pid)))
            time.sleep(args.sample_s)
        _, stderr = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"anonstream failed (exit {process.returncode}):\n{stderr[-3000:]}")
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        minutes = _per_minute(jsonl, args.fps)
    streams = summary["streams"]
    for minute in minutes:
        at = [sample for sample in samples if sample.t_s <= 60 * minute.minute]
        minute.rss_mb = at[-1].total_mb if at else None
    steady = [sample.total_mb for sample in samples if sample.t_s >= 60] or [0.0]  # after warm-up
    growth = steady[-1] - steady[0]
    peak = max(sample.total_mb for sample in samples)

    what = args.source or f"{len(streams)} x {args.size}@{args.fps}"
    table = Table(title=f"soak: {what} live, {args.workers} workers, MP4 recording; {describe(info)}")
    for column in ("minute", "frames out", "dropped", "lost", "p50 ms", "p95 ms", "p99 ms", "memory MB"):
        table.add_column(column, justify="right")
    for minute in minutes:
        p50, p95, p99 = minute.percentiles()
        memory = "-" if minute.rss_mb is None else f"{minute.rss_mb:.0f}"
        table.add_row(
            str(minute.minute),
            str(len(minute.latency_ms)),
            str(minute.dropped),
            str(minute.lost),
            f"{p50:.1f}",
            f"{p95:.1f}",
            f"{p99:.1f}",
            memory,
        )
    out.print(table)
    for stream in streams:
        e2e = stream["latency_ms"]["end to end"]
        out.print(
            f"{stream['stream']}: {stream['frames_out']}/{stream['frames_in']} frames recorded, "
            f"{stream['dropped']} dropped {stream['dropped_by']}, {stream['lost']} lost; "
            f"end to end p50/p95/p99 {e2e[0]:.1f}/{e2e[1]:.1f}/{e2e[2]:.1f} ms"
        )
    out.print(
        f"memory (all anonstream processes): peak {peak:.0f} MB; after the first minute "
        f"{steady[0]:.0f} MB, at the end {steady[-1]:.0f} MB ({growth:+.1f} MB)"
    )
    out.print(f"workers: {'; '.join(summary['workers'])}")
    write_json(
        args.json,
        {
            "machine": info,
            "minutes": args.minutes,
            "size": args.size,
            "streams_played": 1 if args.source else args.streams,
            "fps": args.fps,
            "workers": args.workers,
            "source": args.source or "synthetic",
            "overrides": args.set,
            "streams": streams,
            "per_minute": [minute.row() for minute in minutes],
            "memory_samples": [{"t_s": sample.t_s, "rss_mb": sample.rss_mb} for sample in samples],
            "memory_growth_after_first_minute_mb": growth,
            "peak_memory_mb": peak,
        },
    )
    out.print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
