"""Masks on video: the share of each second masked, ghost boxes, held-box growth; anonstream and deface.

    python benchmarks/video.py [VIDEO ...] [--set KEY=VALUE ...] [--json FILE]

VIDEO is any video file, or `demo` for the bundled example clip (made on the
spot, as `anonstream demo` makes it); the default is the demo clip and
../shared/eval/videos/carpark_plates_2560x1920.mp4. In the same run, each
clip goes through
- anonstream: `anonstream run VIDEO -o OUT.mp4 --mask solid --metrics-jsonl`,
  the command users run, default configuration (faces and plates) plus any --set;
- deface: `deface VIDEO --replacewith solid --boxes`, its defaults otherwise.
Then the input and both outputs are decoded, and for every frame the share of
its pixels that the solid fill turned black (within 12 grey levels, as in
protection.py; pixels already that dark are not counted) is taken, so that
the two tools' different H.264 encodings do not count as masks; the masked
share per second is the mean over each second's frames. These clips
have no annotations, so this says how much of the picture each tool covers,
not whether it covers the right thing (protection.py does, on annotated sets).
From anonstream's per-frame JSONL (detected and held boxes, as found, before
mask growth), two tracker measures (deface has no tracker, so it has neither):
- ghost boxes: held boxes in a frame where a detection of the same class
  overlaps them (``tracking_measures``, shared with protection.py);
- growth: each held box against the detection it came from (the detection of
  its class it overlaps best, within the last 75 frames: the JSONL has no
  track identities), the larger of its width and height ratios; the worst
  over the clip.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import av
import numpy as np
from common import ANONSTREAM, EVAL, RESULTS, console, describe, machine, measure, need, tracking_measures, write_json
from rich.table import Table

TOLERANCE = 12  # as protection.py: a pixel is masked when the black fill left every channel within this
DEFAULT_CLIPS = ["demo", str(EVAL / "videos" / "carpark_plates_2560x1920.mp4")]


def decode(path: Path) -> tuple[list[np.ndarray], float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or 30)
        return [frame.to_ndarray(format="bgr24") for frame in container.decode(stream)], rate


def masked_per_second(source: list[np.ndarray], output: list[np.ndarray], fps: float) -> list[float]:
    if len(output) > len(source):
        # deface's reader (imageio's FFmpeg) fills a video whose first frame starts late (the car park's at 0.8 s)
        # with copies of it from 0 s: its frames are the last ones
        output = output[len(output) - len(source) :]
    if len(source) != len(output):
        raise SystemExit(f"the output has {len(output)} frames, the input {len(source)}")
    # deface's writer pads each side to a multiple of 16 (FFmpeg's macro block): compare the picture itself
    shares = [
        float(((o[: s.shape[0], : s.shape[1]] <= TOLERANCE).all(axis=2) & (s > TOLERANCE).any(axis=2)).mean())
        for s, o in zip(source, output, strict=True)
    ]
    per = max(1, round(fps))
    return [float(np.mean(shares[i : i + per])) for i in range(0, len(shares), per)]


def clip_path(name: str, work: Path) -> Path:
    if name == "demo":
        from anonstream.demo import AstronautClip

        return AstronautClip(frames=90, plate=True).write(work / "astronaut.mp4")  # as `anonstream demo` makes it
    return need(Path(name).resolve(), "video")


def run_clip(name: str, work: Path, extra: list[str]) -> dict[str, Any]:
    video = clip_path(name, work)
    out = work / video.stem
    out.mkdir()
    jsonl = out / "frames.jsonl"
    argv = [*ANONSTREAM, "run", str(video), "-o", str(out / "anonstream.mp4"), "--mask", "solid", "-q"]
    argv += ["--metrics-jsonl", str(jsonl), "--no-audio"]
    for assignment in extra:
        argv += ["--set", assignment]
    ours = measure(argv, "anonstream")
    deface_argv = ["deface", "--ep", "CPUExecutionProvider", "--replacewith", "solid", "--boxes"]
    deface_argv += [str(video), "-o", str(out / "deface.mp4")]
    theirs = measure(deface_argv, "deface")
    source, fps = decode(video)
    result: dict[str, Any] = {"clip": video.name, "frames": len(source), "fps": fps, "tools": {}}
    for tool, measured, command in (("anonstream", ours, argv), ("deface", theirs, deface_argv)):
        frames, _ = decode(out / f"{tool}.mp4")
        per_second = masked_per_second(source, frames, fps)
        result["tools"][tool] = {
            "command": command,
            "wall_s": measured.wall_s,
            "masked_share_per_second": per_second,
            "masked_share_mean": float(np.mean(per_second)),
            "masked_share_max": float(np.max(per_second)),
        }
    result["tools"]["anonstream"] |= tracking_measures(jsonl)
    return result


def render(results: list[dict[str, Any]], info: dict[str, object]) -> Table:
    table = Table(title=f"masks on video, anonstream / deface; {describe(info)}")
    for column in ("clip", "frames", "masked share, mean of seconds", "worst second", "held boxes", "ghost boxes"):
        table.add_column(column, justify="right")
    table.add_column("largest held / its detection", justify="right")
    for r in results:
        a, d = r["tools"]["anonstream"], r["tools"]["deface"]
        table.add_row(
            r["clip"],
            str(r["frames"]),
            f"{a['masked_share_mean']:.4f} / {d['masked_share_mean']:.4f}",
            f"{a['masked_share_max']:.4f} / {d['masked_share_max']:.4f}",
            f"{a['held_boxes']} / -",
            f"{a['ghost_boxes']} / -",
            f"{a['largest_growth']:.2f}x" if a["held_boxes"] else "-",
        )
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clips", nargs="*", default=DEFAULT_CLIPS, help="video files, or demo (default: demo, carpark)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="anonstream config override")
    parser.add_argument("--json", type=Path, default=RESULTS / "video.json", help="default: results/video.json")
    args = parser.parse_args()
    info = machine()
    out = console()
    results = []
    with tempfile.TemporaryDirectory(prefix="anonstream-video-") as scratch:
        for index, name in enumerate(args.clips):
            work = Path(scratch) / str(index)
            work.mkdir()
            results.append(run_clip(name, work, args.set))
            out.print(f"  {results[-1]['clip']}: done")
    out.print(render(results, info))
    write_json(args.json, {"machine": info, "overrides": args.set, "tolerance": TOLERANCE, "clips": results})
    out.print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
