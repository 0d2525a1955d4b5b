"""Protection: how many annotated faces or plates each tool really hides, anonstream and deface side by side.

    python benchmarks/protection.py [DATASET] [--limit N] [--set KEY=VALUE ...] [--json FILE]

DATASET is any folder with a gt.csv (image,x,y,w,h,label,ignore; see
../shared/eval/README.md); the default is ../shared/eval/wider_dev. A gt.csv
with no rows times every image in the folder (benchmarks/bigphotos.py makes
large photos to run it on). The images
are first decoded once into PNG files, so that both tools read the same pixels
and write lossless output. Then, in the same run:
- anonstream: `anonstream run --source <pngs> --record <out> --mask solid --stills`,
  the command users run, with its default configuration (faces and plates)
  plus any --set, e.g. `--set 'detect=["plates"]'` or
  `--set detectors.plates.shapes=always` to measure one detector or cue
  (--sequence drops --stills, for a folder of video frames such as otb_girl);
- deface: `deface --replacewith solid --boxes` with its defaults otherwise
  (CenterFace at full resolution, threshold 0.2, mask scale 1.3 (each side grown by 0.3), CPU provider).
For every ground-truth box the share of its pixels the tool changed is
computed (a pixel changed when a channel moved by more than --tolerance grey
levels); a box is protected when that share is at least 0.8. Boxes flagged
ignore=1 are not counted, and a mask on them is not over-masking. Over-masking
is the share of all pixels that changed outside every box grown by a quarter
of its size on each side. Of the boxes that leaked, those with at least a
fifth of their pixels changed are counted as "partly masked": found, but
masked too small. With --sequence, the runs of consecutive frames that leak
are counted too, and of frames not masked at all (under a fifth: a head
turned away that no mask followed), besides the tracker's ghost boxes. The
table goes to the terminal, the figures to JSON
(default benchmarks/results/protection-<dataset>.json).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from common import (
    ANONSTREAM,
    EVAL,
    RESULTS,
    Measured,
    console,
    describe,
    machine,
    measure,
    need,
    tracking_measures,
    write_json,
)
from rich.table import Table

PROTECTED_AT = 0.8
PARTLY_AT = 0.2  # a leaked box with at least this share changed was found, but masked too small
# A pixel counts as changed when a channel moved by more than this many grey levels. The
# reference figures in ../shared/eval/README.md are reproduced exactly at 12 (the method
# compared re-encoded images); dark pixels under a black fill barely move.
TOLERANCE = 12
GROW = 0.25
# (label, lower bound inclusive, upper bound exclusive) of sqrt(w*h) in pixels
SIZE_BINS = (("< 16 px", 0.0, 16.0), ("16-32 px", 16.0, 32.0), ("32-64 px", 32.0, 64.0), (">= 64 px", 64.0, np.inf))
ALL = "all"
LABELS = [label for label, _, _ in SIZE_BINS] + [ALL]


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    w: int
    h: int
    ignore: bool

    @property
    def size(self) -> float:
        return float(np.sqrt(self.w * self.h))


@dataclass
class Score:
    """One tool's result on one dataset."""

    tool: str
    command: list[str]
    wall_s: float = 0.0
    cpu_s: float = 0.0
    images: int = 0
    missing_outputs: int = 0
    counted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LABELS, 0))
    protected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LABELS, 0))
    partly: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LABELS, 0))
    over_pixels: int = 0
    total_pixels: int = 0
    # the images with the most leaked boxes, to look at
    worst: list[tuple[str, int]] = field(default_factory=list)
    tracking: dict[str, Any] = field(default_factory=dict)  # --sequence: ghost boxes and held-box growth
    # --sequence: consecutive frames (images in name order) where a box leaked, or was not masked at all
    # (under PARTLY_AT: a head turned away that nothing followed), the longest of each
    longest_leak_run: int = 0
    unmasked_frames: int = 0
    longest_unmasked_run: int = 0

    def share(self, label: str) -> float | None:
        return self.protected[label] / self.counted[label] if self.counted[label] else None

    @property
    def over_masking(self) -> float:
        return self.over_pixels / self.total_pixels if self.total_pixels else 0.0

    def as_json(self) -> dict[str, object]:
        data = asdict(self)
        data["protected_share"] = {label: self.share(label) for label in self.counted}
        data["over_masking_share"] = self.over_masking
        data["worst"] = sorted(self.worst, key=lambda item: -item[1])[:10]
        return data


def read_ground_truth(dataset: Path, limit: int | None) -> dict[str, list[Box]]:
    gt = need(dataset / "gt.csv", "ground truth")
    boxes: dict[str, list[Box]] = defaultdict(list)
    with gt.open(newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            box = Box(int(row["x"]), int(row["y"]), int(row["w"]), int(row["h"]), row.get("ignore", "0") == "1")
            boxes[row["image"]].append(box)
    if not boxes:  # nothing annotated (benchmarks/bigphotos.py's carpark): every image, for the wall time alone
        images = (p for p in dataset.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        boxes = {p.relative_to(dataset).as_posix(): [] for p in images}
    names = sorted(boxes)[:limit] if limit else sorted(boxes)
    return {name: boxes[name] for name in names}


def prepare(dataset: Path, names: list[str], work: Path) -> dict[str, Path]:
    """Decode every image once into PNG, so both tools see the same pixels and write lossless output."""
    inputs: dict[str, Path] = {}
    for name in names:
        pixels = cv2.imread(str(dataset / name), cv2.IMREAD_COLOR)
        if pixels is None:
            raise SystemExit(f"{dataset / name} is listed in gt.csv but cannot be read")
        target = work / "input" / Path(name).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), pixels)
        inputs[name] = target
    return inputs


def run_anonstream(
    inputs: dict[str, Path], work: Path, extra: list[str], sequence: bool, mask: str = "solid"
) -> tuple[Measured, list[str], dict[str, Path]]:
    out = work / f"anonstream-{mask}"
    argv = [*ANONSTREAM, "run", "--source", str(work / "input"), "--record", str(out), "--mask", mask, "-q"]
    if sequence:  # the per-frame boxes, for the tracker's measures
        argv += ["--metrics-jsonl", str(work / "frames.jsonl")]
    else:
        argv.append("--stills")
    for assignment in extra:
        argv += ["--set", assignment]
    measured = measure(argv, "anonstream")
    # a folder source records into DIR/<stream id>/<same relative name>
    stream_dir = next(p for p in out.iterdir() if p.is_dir())
    outputs = {name: stream_dir / path.relative_to(work / "input") for name, path in inputs.items()}
    return measured, argv, outputs


def run_deface(
    inputs: dict[str, Path], work: Path, mask: tuple[str, ...] = ("--replacewith", "solid", "--boxes"), name: str = ""
) -> tuple[Measured, list[str], dict[str, Path]]:
    """deface on every image, masking as ``mask`` says (none: its own default, an elliptic blur)."""
    # deface writes <input>_anonymized.<ext> beside each input: give it links in a folder of its own
    links = work / f"deface{name}"
    links.mkdir()
    outputs: dict[str, Path] = {}
    for i, (name, path) in enumerate(inputs.items()):
        link = links / f"{i:06d}.png"
        link.symlink_to(path.resolve())
        outputs[name] = links / f"{i:06d}_anonymized.png"
    argv = ["deface", "--ep", "CPUExecutionProvider", *mask]
    shown = [*argv, "<images>"]
    measured = measure([*argv, *(str(links / f"{i:06d}.png") for i in range(len(inputs)))], "deface")
    return measured, shown, outputs


def size_label(size: float) -> str:
    return next(label for label, low, high in SIZE_BINS if low <= size < high)


def score(
    tool: str,
    command: list[str],
    measured: Measured,
    truth: dict[str, list[Box]],
    inputs: dict[str, Path],
    outputs: dict[str, Path],
    tolerance: int,
) -> Score:
    result = Score(tool, command, measured.wall_s, measured.cpu_s, images=len(inputs))
    leak_run = unmasked_run = 0
    for name, boxes in truth.items():
        original = cv2.imread(str(inputs[name]), cv2.IMREAD_COLOR)
        anonymized = cv2.imread(str(outputs[name]), cv2.IMREAD_COLOR) if outputs[name].is_file() else None
        if anonymized is None:
            result.missing_outputs += 1
            anonymized = original
        if anonymized.shape != original.shape:
            raise SystemExit(f"{tool} changed the size of {name}: {original.shape} -> {anonymized.shape}")
        changed = (cv2.absdiff(anonymized, original) > tolerance).any(axis=2)
        height, width = changed.shape
        allowed = np.zeros_like(changed)
        leaked = unmasked = 0
        for box in boxes:
            dx, dy = round(box.w * GROW), round(box.h * GROW)
            allowed[
                max(0, box.y - dy) : max(0, box.y + box.h + dy), max(0, box.x - dx) : max(0, box.x + box.w + dx)
            ] = True
            x0, y0 = min(max(box.x, 0), width), min(max(box.y, 0), height)
            x1, y1 = min(max(box.x + box.w, 0), width), min(max(box.y + box.h, 0), height)
            if box.ignore or x1 <= x0 or y1 <= y0:
                continue
            share = changed[y0:y1, x0:x1].mean()
            hidden = share >= PROTECTED_AT
            for label in (size_label(box.size), ALL):
                result.counted[label] += 1
                result.protected[label] += int(hidden)
                result.partly[label] += int(PARTLY_AT <= share < PROTECTED_AT)
            leaked += int(not hidden)
            unmasked += int(share < PARTLY_AT)
        leak_run = leak_run + 1 if leaked else 0
        unmasked_run = unmasked_run + 1 if unmasked else 0
        result.longest_leak_run = max(result.longest_leak_run, leak_run)
        result.longest_unmasked_run = max(result.longest_unmasked_run, unmasked_run)
        result.unmasked_frames += int(unmasked > 0)
        result.over_pixels += int((changed & ~allowed).sum())
        result.total_pixels += changed.size
        if leaked:
            result.worst.append((name, leaked))
    return result


def render(scores: list[Score], dataset: Path, info: dict[str, object], sequence: bool) -> Table:
    kind = "a sequence" if sequence else "stills"
    table = Table(title=f"protection on {dataset.name} ({scores[0].images} images, {kind}); {describe(info)}")
    table.add_column("boxes by size", justify="left")
    table.add_column("boxes", justify="right")
    for s in scores:
        table.add_column(f"{s.tool} protected", justify="right")
    for label in LABELS:
        cells = [f"{s.share(label):.3f}" if s.share(label) is not None else "-" for s in scores]
        table.add_row(label, str(scores[0].counted[label]), *cells, end_section=label == SIZE_BINS[-1][0])
    table.add_row("over-masking share", "", *(f"{s.over_masking:.4f}" for s in scores), end_section=True)
    table.add_row(
        "leaked: partly masked", "", *(f"{s.partly[ALL]} of {s.counted[ALL] - s.protected[ALL]}" for s in scores)
    )
    if sequence:  # deface has no tracker: nothing held, so no ghosts
        table.add_row("held boxes", "", *(str(s.tracking.get("held_boxes", "-")) for s in scores))
        ghosts = (str(s.tracking.get("ghost_boxes", "-")) for s in scores)
        table.add_row("ghost boxes (held beside a detection)", "", *ghosts)
        table.add_row("longest run of frames leaking", "", *(str(s.longest_leak_run) for s in scores))
        table.add_row("frames not masked at all", "", *(str(s.unmasked_frames) for s in scores))
        table.add_row("longest run not masked at all", "", *(str(s.longest_unmasked_run) for s in scores))
    table.add_row("wall s (whole command)", "", *(f"{s.wall_s:.1f}" for s in scores))
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path, nargs="?", default=EVAL / "wider_dev", help="folder with a gt.csv")
    parser.add_argument("--limit", type=int, help="only the first N images (sorted by name), for quick runs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="anonstream config override")
    parser.add_argument("--sequence", action="store_true", help="the images are frames of one video: no --stills")
    parser.add_argument(
        "--tolerance",
        type=int,
        default=TOLERANCE,
        help=f"count a pixel as changed only if a channel moved by more than this (default {TOLERANCE}; 0: any change)",
    )
    parser.add_argument("--no-deface", action="store_true", help="measure anonstream only")
    parser.add_argument("--work", type=Path, help="keep the decoded inputs and both tools' outputs here")
    parser.add_argument("--json", type=Path, help="default: benchmarks/results/protection-<dataset>.json")
    args = parser.parse_args()
    dataset = need(args.dataset.resolve(), "dataset folder")
    truth = read_ground_truth(dataset, args.limit)
    info = machine()
    out = console()
    work = Path(tempfile.mkdtemp(prefix="anonstream-protection-")) if args.work is None else args.work
    if args.work is not None:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    try:
        out.print(f"{dataset}: {len(truth)} images, {sum(len(b) for b in truth.values())} boxes")
        inputs = prepare(dataset, list(truth), work)
        scores = []
        measured, command, outputs = run_anonstream(inputs, work, args.set, args.sequence)
        out.print(f"  anonstream: {measured.wall_s:.1f} s")
        scores.append(score("anonstream", command, measured, truth, inputs, outputs, args.tolerance))
        if args.sequence:
            scores[-1].tracking = tracking_measures(work / "frames.jsonl")
        if not args.no_deface:
            measured, command, outputs = run_deface(inputs, work)
            out.print(f"  deface: {measured.wall_s:.1f} s")
            scores.append(score("deface", command, measured, truth, inputs, outputs, args.tolerance))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    out.print(render(scores, dataset, info, args.sequence))
    for s in scores:
        if s.missing_outputs:
            out.print(f"[red]{s.tool}: {s.missing_outputs} images had no output (counted as unprotected)[/red]")
    target = args.json or RESULTS / f"protection-{dataset.name}.json"
    write_json(
        target,
        {
            "dataset": str(dataset),
            "limit": args.limit,
            "sequence": args.sequence,
            "tolerance": args.tolerance,
            "overrides": args.set,
            "machine": info,
            "protected_at": PROTECTED_AT,
            "tools": [s.as_json() for s in scores],
        },
    )
    out.print(f"figures written to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
