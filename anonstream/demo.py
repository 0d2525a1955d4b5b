"""The bundled example: a short clip of a real face and a licence plate, made on the spot.

The face is scikit-image's ``astronaut()`` photo (Eileen Collins, public
domain), moving across a plain background and growing; with ``plate`` a car
carrying a rendered licence plate drives the other way below it. No media
file is committed. Tests use the same clip, with the exact face and plate
boxes in every frame.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

# The face in the 512x512 astronaut photo, x1, y1, x2, y2 (measured with CenterFace, then rounded outwards).
ASTRONAUT_FACE = (180, 56, 272, 180)
PLATE_TEXT = "AB 123 CD"


def plate_image(width: int, text: str = PLATE_TEXT) -> np.ndarray:
    """A white plate with a dark border and black characters, ``width`` pixels wide (4.5:1, as in Europe)."""
    height = max(8, round(width / 4.5))
    plate = np.full((height, width, 3), 245, np.uint8)
    cv2.rectangle(plate, (1, 1), (width - 2, height - 2), (30, 30, 30), max(1, height // 14))
    scale = cv2.getFontScaleFromHeight(cv2.FONT_HERSHEY_DUPLEX, round(height * 0.6), max(1, height // 10))
    thickness = max(1, height // 10)
    (text_w, text_h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_DUPLEX, scale, thickness)
    scale *= min(1.0, 0.88 * width / text_w)
    (text_w, text_h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_DUPLEX, scale, thickness)
    origin = ((width - text_w) // 2, (height + text_h) // 2)
    cv2.putText(plate, text, origin, cv2.FONT_HERSHEY_DUPLEX, scale, (15, 15, 15), thickness, cv2.LINE_AA)
    return plate


def astronaut_bgr() -> np.ndarray:
    from skimage import data

    photo: np.ndarray = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    return photo


@dataclass(frozen=True)
class AstronautClip:
    width: int = 640
    height: int = 360
    frames: int = 60
    fps: int = 30
    plate: bool = False  # a car with a licence plate drives across below the face

    def placement(self, index: int) -> tuple[float, int, int]:
        """Scale of the photo and its top-left corner in frame ``index``."""
        t = index / max(1, self.frames - 1)
        scale = (0.35 + 0.25 * t) * self.height / 360
        size = round(512 * scale)
        x = round((self.width - size) * t)
        y = round((self.height - size) * (0.5 + 0.3 * np.sin(2 * np.pi * t)) / 1)
        return scale, x, max(0, min(self.height - size, y))

    def face_box(self, index: int) -> tuple[int, int, int, int]:
        """Where the face is in frame ``index``, x1, y1, x2, y2."""
        scale, x, y = self.placement(index)
        x1, y1, x2, y2 = ASTRONAUT_FACE
        return (x + int(x1 * scale), y + int(y1 * scale), x + int(np.ceil(x2 * scale)), y + int(np.ceil(y2 * scale)))

    def plate_box(self, index: int) -> tuple[int, int, int, int]:
        """Where the plate is in frame ``index``, x1, y1, x2, y2: right to left along the bottom."""
        width = round(self.width * 0.22)
        height = plate_image(width).shape[0]
        t = index / max(1, self.frames - 1)
        x = round((self.width - width - 8) * (1 - t)) + 4
        y = self.height - height - round(self.height * 0.06)
        return x, y, x + width, y + height

    def frame(self, index: int, photo: np.ndarray) -> np.ndarray:
        canvas = np.empty((self.height, self.width, 3), np.uint8)
        canvas[:] = (90, 120, 100)
        scale, x, y = self.placement(index)
        size = round(512 * scale)
        canvas[y : y + size, x : x + size] = cv2.resize(photo, (size, size), interpolation=cv2.INTER_AREA)
        if self.plate:
            x1, y1, x2, y2 = self.plate_box(index)
            margin = (y2 - y1) // 2
            car = (max(0, y1 - 2 * margin), max(0, x1 - margin), y2 + margin, x2 + margin)
            canvas[car[0] : car[2], car[1] : car[3]] = (70, 40, 35)  # the car's dark blue back
            canvas[y1:y2, x1:x2] = plate_image(x2 - x1)
        return canvas

    def write(self, path: Path) -> Path:
        """Encode the clip as H.264 MP4 (high quality, so the face stays recognisable)."""
        photo = astronaut_bgr()
        path.parent.mkdir(parents=True, exist_ok=True)
        with av.open(os.fspath(path), mode="w") as container:
            video = container.add_stream("libx264", rate=Fraction(self.fps))
            video.width, video.height, video.pix_fmt = self.width, self.height, "yuv420p"
            video.options = {"crf": "12", "preset": "veryfast"}
            for index in range(self.frames):
                frame = av.VideoFrame.from_ndarray(self.frame(index, photo), format="bgr24")
                container.mux(video.encode(frame))
            container.mux(video.encode(None))
        return path

    def write_images(self, folder: Path, suffix: str = ".png") -> list[Path]:
        photo = astronaut_bgr()
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for index in range(self.frames):
            path = folder / f"frame_{index:04d}{suffix}"
            cv2.imwrite(os.fspath(path), self.frame(index, photo))
            paths.append(path)
        return paths
