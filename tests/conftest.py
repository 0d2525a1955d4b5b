"""Shared fixtures: media made on the spot from the astronaut photo, and a CLI runner."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest

from anonstream.demo import AstronautClip


@pytest.fixture(scope="session")
def clip() -> AstronautClip:
    return AstronautClip(width=640, height=360, frames=48, fps=24)


@pytest.fixture(scope="session")
def clip_path(clip: AstronautClip, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clip.write(tmp_path_factory.mktemp("media") / "astronaut.mp4")


def decode_video(path: Path) -> tuple[list[np.ndarray], float]:
    """Every frame of a video as BGR, and its average frame rate."""
    with av.open(os.fspath(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(stream)]
        return frames, float(stream.average_rate or 0)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def anonstream_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "anonstream", *args]


def run_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(anonstream_cmd(*args), capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(cwd)
