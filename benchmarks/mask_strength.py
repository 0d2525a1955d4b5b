"""Mask strength: does a face detector find a masked face again? anonstream's mask modes and deface, one run.

    python benchmarks/mask_strength.py [DATASET] [--limit N] [--min-size PX] [--set KEY=VALUE ...] [--json FILE]

A mask that a detector sees through is weaker than it looks. For every
annotated face of DATASET (default ../shared/eval/wider_dev) at least
--min-size px (square root of its area, default 24), not flagged ignore, that
a detector finds in the raw image (a detection of score >= 0.5 with IoU >= 0.3),
this checks whether the same detector finds it again in the anonymized image.
Two detectors (../shared/eval/README.md, "How mask strength is measured"):
- YuNet (OpenCV zoo, MIT; ../shared/eval/models), run by cv2.FaceDetectorYN,
  which anonstream does not use at all;
- CenterFace, the model anonstream masks with, run as deface runs it (full
  resolution): what matters is whether any detector still finds the face,
  the one that placed the mask included.
The images are decoded once into PNG; then, in the same run, each on the same
pixels: `anonstream run --stills --mask MODE` for blur, pixelate and solid,
with the default configuration otherwise (faces and plates) plus any --set,
and deface with its own defaults (an elliptic blur, mask scale 1.3, threshold
0.2). The share found again is reported per tool and detector, and split by
whether the tool masked the face at all: whether its solid fill, on the same
detections, changes at least 80 % of the face's pixels (as protection.py counts
it; deface runs a second time for that, with --replacewith solid). A face found
again under a mask means the mask is weak; one left unmasked means the tool
missed it. Figures go to JSON (default benchmarks/results/mask_strength.json).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from common import EVAL, RESULTS, console, describe, machine, need, write_json
from deface.centerface import CenterFace
from protection import PROTECTED_AT, TOLERANCE, Box, prepare, read_ground_truth, run_anonstream, run_deface
from rich.table import Table

from anonstream.stream.detections import iou_matrix

MODES = ("blur", "pixelate", "solid")
SCORE = 0.5  # a detection counts from this score (the measure's definition)
MATCH_IOU = 0.3  # ... and finds a face when it overlaps it this much
YUNET = "face_detection_yunet_2023mar.onnx"


class YuNet:
    """OpenCV zoo's YuNet at each image's own size."""

    name = "YuNet"

    def __init__(self, model: Path) -> None:
        self._net = cv2.FaceDetectorYN.create(str(model), "", (320, 320), SCORE, 0.3, 5000)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        self._net.setInputSize((image.shape[1], image.shape[0]))
        _, faces = self._net.detect(image)
        if faces is None:
            return np.zeros((0, 4), np.float32)
        x, y, w, h = faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 3]
        return np.stack([x, y, x + w, y + h], axis=1).astype(np.float32)


class CenterFaceFull:
    """CenterFace as deface runs it: the whole image at full resolution (its own shape each time)."""

    name = "CenterFace"

    def __init__(self) -> None:
        self._net = CenterFace(in_shape=None, backend="onnxrt", override_execution_provider="CPUExecutionProvider")

    def __call__(self, image: np.ndarray) -> np.ndarray:
        self._net.in_shape = (image.shape[1], image.shape[0])
        found, _ = self._net(image, threshold=SCORE)
        return np.asarray(found, np.float32)[:, :4].reshape(-1, 4)


Detector = YuNet | CenterFaceFull


@dataclass
class Strength:
    """One tool's masks against one detector."""

    tool: str
    detector: str
    faces: int = 0  # faces the detector finds in the raw images
    found_again: int = 0
    found_again_masked: int = 0  # ... of which the tool had masked (a weak mask, not a miss)
    examples: list[str] = field(default_factory=list)  # images where a masked face was found again

    @property
    def share(self) -> float:
        return self.found_again / self.faces if self.faces else 0.0

    @property
    def share_masked(self) -> float:
        return self.found_again_masked / self.faces if self.faces else 0.0


def found(detections: np.ndarray, faces: list[Box]) -> list[bool]:
    """For each face, whether a detection overlaps it enough."""
    if not faces or not len(detections):
        return [False] * len(faces)
    boxes = np.array([[b.x, b.y, b.x + b.w, b.y + b.h] for b in faces], np.float32)
    return [bool(row.max() >= MATCH_IOU) for row in iou_matrix(boxes, detections)]


def _read(path: Path, like: np.ndarray, tool: str) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
    if image is None or image.shape != like.shape:
        raise SystemExit(f"{tool} wrote no image of the same size as {path.name}'s input")
    return image


def measure_strength(
    truth: dict[str, list[Box]],
    inputs: dict[str, Path],
    outputs: dict[str, dict[str, Path]],
    fills: dict[str, dict[str, Path]],
    detectors: list[Detector],
) -> list[Strength]:
    """``outputs``: each tool's masked images; ``fills``: the same tool's solid fill, which shows what it covers."""
    results = {(tool, d.name): Strength(tool, d.name) for tool in outputs for d in detectors}
    for name, faces in truth.items():
        raw = cv2.imread(str(inputs[name]), cv2.IMREAD_COLOR)
        seen = {d.name: found(d(raw), faces) for d in detectors}
        for tool, paths in outputs.items():
            masked = _read(paths[name], raw, tool)
            changed = (cv2.absdiff(_read(fills[tool][name], raw, tool), raw) > TOLERANCE).any(axis=2)
            covered = [bool(changed[b.y : b.y + b.h, b.x : b.x + b.w].mean() >= PROTECTED_AT) for b in faces]
            for detector in detectors:
                again = found(detector(masked), faces)
                result = results[(tool, detector.name)]
                for before, after, hidden in zip(seen[detector.name], again, covered, strict=True):
                    result.faces += before
                    result.found_again += before and after
                    result.found_again_masked += before and after and hidden
                    if before and after and hidden and name not in result.examples:
                        result.examples.append(name)
    return list(results.values())


def render(results: list[Strength], dataset: Path, images: int, min_size: int, info: dict[str, object]) -> Table:
    table = Table(
        title=f"masked faces found again on {dataset.name} ({images} images, faces >= {min_size} px); {describe(info)}"
    )
    table.add_column("tool, mask", justify="left")
    detectors = list(dict.fromkeys(r.detector for r in results))
    for detector in detectors:
        table.add_column(f"{detector}: found again", justify="right")
        table.add_column("under a mask", justify="right")
    for tool in dict.fromkeys(r.tool for r in results):
        cells = []
        for detector in detectors:
            r = next(r for r in results if r.tool == tool and r.detector == detector)
            cells += [f"{r.share:.3f} ({r.found_again} of {r.faces})", f"{r.share_masked:.3f}"]
        table.add_row(tool, *cells)
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path, nargs="?", default=EVAL / "wider_dev", help="folder with a gt.csv")
    parser.add_argument("--limit", type=int, help="only the first N images with a face counted, for quick runs")
    parser.add_argument("--min-size", type=int, default=24, help="faces at least this many px (sqrt of area)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="anonstream config override")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="anonstream's mask modes")
    parser.add_argument("--no-deface", action="store_true", help="measure anonstream only")
    parser.add_argument("--json", type=Path, default=RESULTS / "mask_strength.json")
    args = parser.parse_args()
    dataset = need(args.dataset.resolve(), "dataset folder")
    yunet = need(EVAL / "models" / YUNET, "the YuNet model")
    truth = {
        name: kept
        for name, boxes in read_ground_truth(dataset, None).items()
        if (kept := [b for b in boxes if not b.ignore and b.size >= args.min_size])
    }
    truth = dict(list(truth.items())[: args.limit]) if args.limit else truth
    info = machine()
    out = console()
    work = Path(tempfile.mkdtemp(prefix="anonstream-mask-strength-"))
    commands: dict[str, list[str]] = {}
    try:
        out.print(f"{dataset}: {len(truth)} images, {sum(len(b) for b in truth.values())} faces >= {args.min_size} px")
        inputs = prepare(dataset, list(truth), work)
        outputs: dict[str, dict[str, Path]] = {}
        for mode in dict.fromkeys([*args.modes, "solid"]):  # solid always: it shows what anonstream covers
            measured, commands[f"anonstream {mode}"], outputs[f"anonstream {mode}"] = run_anonstream(
                inputs, work, args.set, sequence=False, mask=mode
            )
            out.print(f"  anonstream --mask {mode}: {measured.wall_s:.1f} s")
        fills = dict.fromkeys(outputs, outputs["anonstream solid"])
        if not args.no_deface:
            measured, commands["deface blur"], outputs["deface blur"] = run_deface(inputs, work, mask=())
            out.print(f"  deface (its default blur): {measured.wall_s:.1f} s")
            _, _, fills["deface blur"] = run_deface(inputs, work, mask=("--replacewith", "solid"), name="-solid")
        results = measure_strength(truth, inputs, outputs, fills, [YuNet(yunet), CenterFaceFull()])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out.print(render(results, dataset, len(truth), args.min_size, info))
    write_json(
        args.json,
        {
            "dataset": str(dataset),
            "images": len(truth),
            "min_size": args.min_size,
            "score": SCORE,
            "match_iou": MATCH_IOU,
            "overrides": args.set,
            "machine": info,
            "commands": commands,
            "results": [asdict(r) | {"share": r.share, "share_masked": r.share_masked} for r in results],
        },
    )
    out.print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
