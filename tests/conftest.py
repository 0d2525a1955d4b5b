"""Shared fixtures: media made on the spot from the astronaut photo, and a CLI runner."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import av
import numpy as np
import onnx
import pytest
from onnx import helper

from anonstream.config import CenterFaceConfig, RuntimeConfig, Views
from anonstream.demo import AstronautClip
from anonstream.stream.wire import Flag, FrameHeader, FrameMessage, pixel_layout
from anonstream.workers.detectors.centerface import CenterFace
from anonstream.workers.models import CENTERFACE, packaged_path

MARK = 16  # a white square this big in the top-left corner of a frame triggers marked_model


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


class ErrorOutput:
    """A running process's output, read as it comes (both pipes, so neither fills), so that a test waits for a
    line on its error output, never for a time."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self._process = process
        self._out, self._err = list[str](), list[str]()
        self._readers = [
            threading.Thread(target=self._read, args=(pipe, lines), daemon=True)
            for pipe, lines in ((process.stdout, self._out), (process.stderr, self._err))
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(pipe: IO[str] | None, lines: list[str]) -> None:
        for line in pipe or ():
            lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self._err)

    def wait_for(self, needle: str, timeout: float = 90) -> None:
        wait_for(lambda: needle in self.text or self._process.poll() is not None, f"{needle!r} on stderr", timeout)
        assert needle in self.text, self.text[-3000:]

    def communicate(self, timeout: float) -> tuple[str, str]:
        """All of its standard and error output, once it has exited."""
        self._process.wait(timeout)
        for reader in self._readers:
            reader.join()
        return "".join(self._out), self.text


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 90) -> None:
    """Poll ``condition`` until it holds; fail saying ``what`` did not happen within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def playable_frames(path: Path) -> int:
    """Frames of a video being written that decode already (0 while it has none, or is mid-write)."""
    with contextlib.suppress(av.FFmpegError, OSError, IndexError):
        return len(decode_video(path)[0])
    return 0


def frame_log(jsonl: Path) -> list[dict[str, Any]]:
    """The complete records of a --metrics-jsonl file so far (a line being written is left out)."""
    if not jsonl.exists():
        return []
    return [
        json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines(keepends=True) if line[-1] == "\n"
    ]


def accounted(records: list[dict[str, Any]]) -> dict[str, int]:
    """Frames recorded, dropped (by each stage) and lost, from a frame log: together, every frame read."""
    counts = {"recorded": 0, "dropped by capture": 0, "dropped by worker": 0, "lost": 0}
    for record in records:
        if "stamps_ns" in record:
            counts["recorded"] += 1
        elif "dropped_by" in record:
            counts[f"dropped by {record['dropped_by']}"] += record.get("count", 1)
        elif "lost" in record:
            counts["lost"] += record["lost"]
    return counts


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def anonstream_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "anonstream", *args]


def run_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(anonstream_cmd(*args), capture_output=True, text=True, timeout=timeout)


def start_cli(*args: str, **popen: Any) -> subprocess.Popen[str]:
    """`anonstream ARGS` in the background, its output captured as text (``popen``: env, start_new_session...)."""
    return subprocess.Popen(anonstream_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(cwd)


def marked_model(path: Path, fill: float) -> Path:
    """CenterFace, but any image whose top-left corner is white looks like ``fill`` to it.

    ``fill=0`` blinds the detector on marked frames while the recorded frame
    still shows the face (the miss a tracker must cover); ``fill=nan`` makes
    inference fail on them alone. Each image of a batch is judged on its own.
    """
    model = onnx.load(str(packaged_path(CENTERFACE)))
    graph = model.graph
    image = graph.input[0].name
    graph.input.remove(graph.input[0])
    graph.input.insert(0, helper.make_tensor_value_info("frame", onnx.TensorProto.FLOAT, ["n", 3, "h", "w"]))
    nodes = [
        helper.make_node("Slice", ["frame"], ["corner"], starts=[0, 0, 4, 4], ends=[2**62, 3, 12, 12]),
        helper.make_node("ReduceMin", ["corner"], ["darkest"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Constant", [], ["white"], value=helper.make_tensor("w", onnx.TensorProto.FLOAT, [], [200.0])),
        helper.make_node("Greater", ["darkest", "white"], ["marked"]),
        helper.make_node("Constant", [], ["fill"], value=helper.make_tensor("f", onnx.TensorProto.FLOAT, [], [fill])),
        helper.make_node("Where", ["marked", "fill", "frame"], [image]),
    ]
    for node in reversed(nodes):
        graph.node.insert(0, node)
    onnx.save(model, str(path))
    return path


def constant_model(path: Path, output: np.ndarray, input_hw: tuple[int | str, int | str] = (640, 640)) -> Path:
    """An ONNX model whose one output is ``output`` whatever the image (batch 1): a YOLO export with known results."""
    x = helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1, 3, *input_hw])
    y = helper.make_tensor_value_info("output0", onnx.TensorProto.FLOAT, list(output.shape))
    known = helper.make_tensor("known", onnx.TensorProto.FLOAT, output.shape, output.astype(np.float32).ravel())
    zero = helper.make_tensor("zero", onnx.TensorProto.FLOAT, [], [0.0])
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),  # a scalar: the output depends on the input
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["known", "nothing"], ["output0"]),
    ]
    graph = helper.make_graph(nodes, "constant", [x], [y], initializer=[known, zero])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


def face_detector(
    stills: dict[str, Any] | None = None, video: dict[str, Any] | None = None, batch_size: int = 1, **fields: Any
) -> CenterFace:
    """CenterFace on the CPU with one thread, configured by ``fields``.

    ``stills`` and ``video`` change keys of those views, e.g. ``video={"max_side": 0}``.
    """
    defaults = CenterFaceConfig()
    config = CenterFaceConfig(
        **fields,
        stills=Views.model_validate(defaults.stills.model_dump() | (stills or {})),
        video=Views.model_validate(defaults.video.model_dump() | (video or {})),
    )
    return CenterFace("faces", config, RuntimeConfig(device="cpu", batch_size=batch_size), threads=1)


def raw_frame(stream: str, seq: int, pixels: np.ndarray, flags: Flag = Flag.NONE) -> FrameMessage:
    """A frame as a capture sends it (30 fps, not yet anonymized), for tests that feed workers directly."""
    layout = pixel_layout(pixels)
    header = FrameHeader(
        stream, seq, seq, seq * 1000, (1, 30000), (30, 1), pixels.shape, str(pixels.dtype), layout, flags
    )
    return FrameMessage(header, pixels)
