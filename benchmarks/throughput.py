"""Throughput: anonstream against deface on the same video, in the same run.

    python benchmarks/throughput.py [--video FILE] [--repeats 3] [--only TEXT] [--json FILE]

Each repetition runs every configuration once, in alternating order, as a
user would run it (whole command, start-up included): deface with its
defaults (full-resolution detection, CPU provider), then anonstream's
default (faces and plates) and `--detect faces`, with 1 and 2 workers, each
plate cue alone, faces at deface's detector input size, and, on the default,
the tracker off, the max-privacy preset (rotating high-resolution face tiles
on video) and batches of 4 frames, to show what each feature costs or gains.
Reports frames per second (median over repetitions), the ratio to deface,
wall and CPU time, peak memory of the largest process, and the machine.
The default video is ../shared/eval/videos/webcam_face_608x1080.mp4
(override with --video or $ANONSTREAM_EVAL pointing at the eval folder).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import av
from common import ANONSTREAM, EVAL, RESULTS, console, describe, machine, measure, need, write_json
from rich.table import Table

RUN = ["anonstream", "run"]
FACES = ["--detect", "faces"]
CONFIGS: dict[str, list[str]] = {
    "deface (CPU, full resolution)": ["deface", "--ep", "CPUExecutionProvider", "{video}", "-o", "{out}/deface.mp4"],
    "anonstream 2 workers, default (faces and plates)": [*RUN, "--workers", "2"],
    "anonstream 2 workers, --detect faces": [*RUN, "--workers", "2", *FACES],
    "anonstream 1 worker, default (faces and plates)": [*RUN, "--workers", "1"],
    "anonstream 1 worker, --detect faces": [*RUN, "--workers", "1", *FACES],
    # what each plate cue costs
    "anonstream 2 workers, plates: text detector only": [*RUN, "--set", "detectors.plates.shapes=never"],
    "anonstream 2 workers, plates: shape cue only": [*RUN, "--set", "detectors.plates.text=false"],
    "anonstream 2 workers, plates: text on the whole frame too": [*RUN, "--set", "detectors.plates.video.whole=true"],
    # faces at deface's detector input size
    "anonstream 2 workers, --detect faces, full resolution": [*RUN, "--workers", "2", *FACES, "--max-side", "0"],
    # what each privacy feature costs on video, against the default
    "anonstream 2 workers, tracker off": [*RUN, "--workers", "2", "--set", "tracker.hold_frames=0"],
    "anonstream 2 workers, --preset max-privacy": [*RUN, "--workers", "2", "--preset", "max-privacy"],
    # what batching frames through the models does on this device (the default on the CPU is no batching)
    "anonstream 2 workers, batches of 4": [*RUN, "--workers", "2", "--set", "runtime.batch_size=4"],
}


@dataclass
class Sample:
    config: str
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    fps: float


def count_frames(video: Path) -> int:
    with av.open(str(video)) as container:
        return sum(1 for _ in container.decode(video=0))


def run_once(name: str, video: Path, frames: int, scratch: Path) -> Sample:
    out = scratch / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
    out.mkdir()
    argv = [a.format(video=video, out=out) for a in CONFIGS[name]]
    if argv[0] == "anonstream":
        argv = [*ANONSTREAM, *argv[1:], "--source", str(video), "--record", str(out), "-q"]
    measured = measure(argv, name)
    shutil.rmtree(out)
    return Sample(name, measured.wall_s, measured.cpu_s, measured.peak_rss_mb, frames / measured.wall_s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, default=EVAL / "videos" / "webcam_face_608x1080.mp4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", action="append", help="run only configurations containing this text")
    parser.add_argument("--json", type=Path, default=RESULTS / "throughput.json")
    args = parser.parse_args()
    need(args.video, "video")
    out = console()
    names = [n for n in CONFIGS if not args.only or any(o in n for o in args.only)]
    frames = count_frames(args.video)
    info = machine()
    out.print(f"{args.video.name}: {frames} frames; {describe(info)}; CPU provider for both tools")
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="anonstream-bench-") as scratch:
        for repeat in range(args.repeats):
            order = names if repeat % 2 == 0 else names[::-1]
            for name in order:
                sample = run_once(name, args.video, frames, Path(scratch))
                samples.append(sample)
                out.print(f"  run {repeat + 1}/{args.repeats} {name}: {sample.fps:.1f} fps")
    by_config = {n: [s for s in samples if s.config == n] for n in names}
    median_fps = {n: statistics.median(s.fps for s in group) for n, group in by_config.items()}
    baseline = next((median_fps[n] for n in names if n.startswith("deface")), None)
    table = Table(
        title=f"throughput on {args.video.name} ({frames} frames), median of {args.repeats}; {describe(info)}"
    )
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
    out.print(table)
    out.print("fps = frames / wall time of the whole command (start-up included); peak MB = largest single process.")
    write_json(
        args.json,
        {
            "machine": info,
            "video": str(args.video),
            "frames": frames,
            "median_fps": median_fps,
            "ratio_to_deface": {n: fps / baseline for n, fps in median_fps.items()} if baseline else None,
            "samples": [asdict(s) for s in samples],
        },
    )
    out.print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
