"""Makes docs/masks.jpg: the bundled photo's face masked each way, the earlier masks (8 samples across)
beside today's defaults (blur 2, pixelate 3) and deface's default blur, at two face sizes.

    python docs/masks.py
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from deface.centerface import CenterFace
from deface.deface import anonymize_frame

from anonstream import Anonymizer
from anonstream.config import MaskConfig
from anonstream.demo import astronaut_bgr
from anonstream.stream.masking import Masking

HERE = Path(__file__).parent
TILE = 200
COLUMNS = [
    ("photo", None),
    ("blur, before (8)", MaskConfig(mode="blur", blocks=8)),
    ("blur, now (2)", MaskConfig(mode="blur")),
    ("pixelate, before (8)", MaskConfig(mode="pixelate", blocks=8)),
    ("pixelate, now (3)", MaskConfig(mode="pixelate")),
    ("solid", MaskConfig(mode="solid")),
    ("deface's blur", "deface"),
]


def row(photo: np.ndarray, anonymizer: Anonymizer, deface: CenterFace) -> list[np.ndarray]:
    found = anonymizer.anonymize(photo).detections
    x1, y1, x2, y2 = found.boxes[int(found.scores.argmax())]
    side = int((x2 - x1) * 2.2)
    cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
    top, left = max(0, cy - side // 2), max(0, cx - side // 2)
    tiles = []
    for title, style in COLUMNS:
        masked = photo.copy()
        if style == "deface":
            deface.in_shape = (photo.shape[1], photo.shape[0])
            dets, _ = deface(photo, threshold=0.2)
            anonymize_frame(dets, masked, 1.3, "blur", True, False, None, 20)
        elif isinstance(style, MaskConfig):
            Masking(style, anonymizer.settings.mask_scales).apply(masked, found)
        tile = cv2.resize(masked[top : top + side, left : left + side], (TILE, TILE), interpolation=cv2.INTER_AREA)
        cv2.rectangle(tile, (0, 0), (TILE, 22), (255, 255, 255), -1)
        cv2.putText(tile, title, (5, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(tile)
    return tiles


def main() -> int:
    photo = astronaut_bgr()
    small = cv2.resize(photo, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)  # a face about 30 px wide
    deface = CenterFace(in_shape=None, backend="onnxrt", override_execution_provider="CPUExecutionProvider")
    with Anonymizer(detect=["faces"]) as anonymizer:
        rows = [np.hstack(row(image, anonymizer, deface)) for image in (photo, small)]
    cv2.imwrite(str(HERE / "masks.jpg"), np.vstack(rows), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
