"""Large photos to benchmark --stills on, made from the shared evaluation data.

    python benchmarks/bigphotos.py OUT [--limit 60] [--scale 3]

Writes two datasets that `benchmarks/protection.py` takes:
- OUT/wider3x: the first --limit images of ../shared/eval/wider_dev (sorted by name), each
  upscaled --scale times (bicubic), saved as JPEG quality 95, with a gt.csv scaled alike:
  photos of 3000 px and more whose faces keep the annotations' proportions;
- OUT/carpark: the 24 frames of videos/carpark_plates_2560x1920.mp4 as PNG, with a gt.csv
  of its header only (no face is annotated): wall time alone.
Nothing is written into the project (the data's licences allow evaluation only).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import av
import cv2
from common import EVAL, console, need


def wider_upscaled(out: Path, limit: int, scale: int) -> int:
    source = need(EVAL / "wider_dev", "WIDER FACE dev set")
    with (source / "gt.csv").open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    names = sorted({row["image"] for row in rows})[:limit]
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        pixels = cv2.imread(str(source / name), cv2.IMREAD_COLOR)
        big = cv2.resize(pixels, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), big, [cv2.IMWRITE_JPEG_QUALITY, 95])
    with (out / "gt.csv").open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=["image", "x", "y", "w", "h", "label", "ignore"])
        writer.writeheader()
        for row in rows:
            if row["image"] in names:
                scaled = {key: str(int(row[key]) * scale) for key in ("x", "y", "w", "h")}
                writer.writerow(row | scaled)
    return len(names)


def carpark_frames(out: Path) -> int:
    video = need(EVAL / "videos" / "carpark_plates_2560x1920.mp4", "car-park video")
    out.mkdir(parents=True, exist_ok=True)
    with av.open(str(video)) as container:
        count = 0
        for count, frame in enumerate(container.decode(video=0), start=1):
            cv2.imwrite(str(out / f"frame_{count - 1:03d}.png"), frame.to_ndarray(format="bgr24"))
    (out / "gt.csv").write_text("image,x,y,w,h,label,ignore\n", encoding="utf-8")
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to write the datasets into (outside the project)")
    parser.add_argument("--limit", type=int, default=60, help="WIDER images to upscale (default 60)")
    parser.add_argument("--scale", type=int, default=3, help="upscaling factor (default 3)")
    args = parser.parse_args()
    out = console()
    wider = wider_upscaled(args.out / f"wider{args.scale}x", args.limit, args.scale)
    frames = carpark_frames(args.out / "carpark")
    out.print(f"{args.out}: wider{args.scale}x ({wider} images), carpark ({frames} frames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
