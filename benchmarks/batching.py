"""A detector alone, by batch size and input size: what batching gains on this machine's device.

    python benchmarks/batching.py [--detector faces|plates] [--device cpu|cuda|tensorrt|auto]
                                  [--sizes 640x352,1088x1920] [--batches 1,2,4,8] [--seconds 5] [--threads 0]
                                  [--json FILE]

For each input size (W x H as the network sees it) and batch size, runs one
of anonstream's detectors (``detect_many``, the calls a worker makes for a
batch of frames; for plates, the text detector alone) on that many frames of
that size, each holding the real face of skimage's astronaut photo and a
rendered plate, over and over for --seconds. Reports images per second,
milliseconds per batch (p50 / p95), and the gain over batch size 1, with the
device, the provider really used and the machine. Whole-pipeline throughput
with and without batching is in throughput.py ("no batching") and scaling.py
(--set runtime.batch_size=N).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
from common import RESULTS, console, describe, machine, write_json
from rich.table import Table

from anonstream.config import Settings, load_settings
from anonstream.demo import astronaut_bgr, plate_image
from anonstream.workers.detectors import Frame, make_detector


def frames_of(width: int, height: int, count: int) -> list[Frame]:
    """``count`` different frames of this size, the face and a plate in a different place in each."""
    photo = cv2.resize(astronaut_bgr(), (min(width, height) // 2,) * 2)
    plate = plate_image(max(40, width // 6))
    frames = []
    for i in range(count):
        canvas = np.full((height, width, 3), 100, np.uint8)
        x = (i * 97) % (width - photo.shape[1] + 1)
        y = (i * 53) % (height - photo.shape[0] + 1)
        canvas[y : y + photo.shape[0], x : x + photo.shape[1]] = photo
        canvas[-plate.shape[0] - 4 : -4, -plate.shape[1] - 4 : -4] = plate
        frames.append(Frame(canvas, seq=i))
    return frames


def settings_for(detector: str, device: str, batch: int) -> Settings:
    """The detector's model on the whole frame at its native size, nothing else."""
    whole = {"whole": True, "max_side": 0, "tile_scale": 0.0, "tiles": 0}
    section: dict[str, object] = {"stills": whole, "video": whole}
    if detector == "plates":
        section |= {"shapes": "never"}
    return load_settings(None, [{"runtime": {"device": device, "batch_size": batch}, "detectors": {detector: section}}])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector", default="faces", choices=["faces", "plates"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "tensorrt"])
    parser.add_argument("--sizes", default="640x352,1088x1920", help="detector input sizes, W x H, comma-separated")
    parser.add_argument("--batches", default="1,2,4,8", help="batch sizes, comma-separated")
    parser.add_argument("--seconds", type=float, default=5.0, help="time spent on each (size, batch)")
    parser.add_argument("--threads", type=int, default=0, help="inference threads (0: onnxruntime's default)")
    parser.add_argument("--json", type=Path, default=None, help="default: benchmarks/results/batching-<device>.json")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in size.lower().split("x")) for size in args.sizes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    info = machine()
    out = console()
    rows = []
    provider = ""
    for width, height in sizes:
        for batch in batches:
            settings = settings_for(args.detector, args.device, batch)
            config = settings.detectors[args.detector]
            detector = make_detector(args.detector, config, settings, args.threads)
            provider = detector.provider
            frames = frames_of(width, height, batch)
            found = detector.detect_many(frames)  # warm-up (TensorRT builds its engine here)
            assert all(len(d) for d in found), f"the {args.detector} detector must find something in every frame"
            times = []
            end = time.perf_counter() + args.seconds
            while time.perf_counter() < end or len(times) < 3:
                start = time.perf_counter()
                detector.detect_many(frames)
                times.append(time.perf_counter() - start)
            per_batch = statistics.median(times)
            rows.append(
                {
                    "size": f"{width}x{height}",
                    "batch": batch,
                    "images_per_s": batch / per_batch,
                    "ms_per_batch_p50": per_batch * 1000,
                    "ms_per_batch_p95": float(np.percentile(times, 95)) * 1000,
                    "batches_timed": len(times),
                }
            )
            out.print(f"  {width}x{height} batch {batch}: {batch / per_batch:.1f} images/s")
    table = Table(title=f"{args.detector} detector alone on {provider}, by input size and batch; {describe(info)}")
    for column in ("input W x H", "batch", "images/s", "vs batch 1", "ms/batch p50", "p95"):
        table.add_column(column, justify="right")
    for row in rows:
        single = next(r for r in rows if r["size"] == row["size"] and r["batch"] == batches[0])
        row["gain"] = row["images_per_s"] / single["images_per_s"]
        table.add_row(
            row["size"],
            str(row["batch"]),
            f"{row['images_per_s']:.1f}",
            f"{row['gain']:.2f}x",
            f"{row['ms_per_batch_p50']:.1f}",
            f"{row['ms_per_batch_p95']:.1f}",
        )
    out.print(table)
    device = provider.removesuffix("ExecutionProvider").lower()
    path = args.json or RESULTS / f"batching-{args.detector}-{device}.json"
    payload = {"machine": info, "detector": args.detector, "device": args.device, "provider": provider}
    write_json(path, payload | {"rows": rows})
    out.print(f"figures written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
