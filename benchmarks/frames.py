"""Frames of an anonymized video, to look at: what a user sees, not a figure.

    python benchmarks/frames.py VIDEO --frames 2,10,18 [--crop X1,Y1,X2,Y2] [--width 960] [--out docs]
                                [--set KEY=VALUE ...]

Runs `anonstream run --source VIDEO` as a user would (default configuration,
plus any --set), with --metrics-jsonl, then writes the chosen frames of the
output (or the --crop region of them, in source pixels), scaled to --width,
as JPEG files OUT/<video>-<frame>.jpg, and prints what was masked in each
(detected and held, by class). The default video is
../shared/eval/videos/carpark_plates_2560x1920.mp4.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import av
import cv2
from common import ANONSTREAM, EVAL, REPO, console, measure, need


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", type=Path, nargs="?", default=EVAL / "videos" / "carpark_plates_2560x1920.mp4")
    parser.add_argument("--frames", default="2,10,18", help="frame numbers, comma-separated")
    parser.add_argument("--crop", help="X1,Y1,X2,Y2: only this region of each frame, in source pixels")
    parser.add_argument("--width", type=int, default=960)
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="anonstream config override")
    args = parser.parse_args()
    video = need(args.video.resolve(), "video")
    wanted = {int(f) for f in args.frames.split(",")}
    out = console()
    with tempfile.TemporaryDirectory(prefix="anonstream-frames-") as scratch:
        record, jsonl = Path(scratch) / "out", Path(scratch) / "frames.jsonl"
        argv = [*ANONSTREAM, "run", "--source", str(video), "--record", str(record), "--metrics-jsonl", str(jsonl)]
        for assignment in args.set:
            argv += ["--set", assignment]
        measured = measure([*argv, "-q"], "anonstream")
        out.print(f"anonymized {video.name} in {measured.wall_s:.1f} s")
        masks = {r["index"]: r for r in map(json.loads, jsonl.read_text().splitlines()) if "stamps_ns" in r}
        args.out.mkdir(parents=True, exist_ok=True)
        with av.open(str(next(record.glob("*.mp4")))) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index not in wanted:
                    continue
                image = frame.to_ndarray(format="bgr24")
                if args.crop:
                    x1, y1, x2, y2 = (int(v) for v in args.crop.split(","))
                    image = image[y1:y2, x1:x2]
                height = round(image.shape[0] * args.width / image.shape[1])
                path = args.out / f"{video.stem}-{index}.jpg"
                cv2.imwrite(str(path), cv2.resize(image, (args.width, height), interpolation=cv2.INTER_AREA))
                record_of = masks.get(index, {})
                found = {k: len(v) for k, v in record_of.get("detected", {}).items()}
                held = {k: len(v) for k, v in record_of.get("tracked", {}).items()}
                out.print(f"  frame {index}: detected {found or 'nothing'}, held {held or 'nothing'} -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
