"""The one validated configuration model.

Every section forbids unknown keys, so a typo in a config file or a ``--set``
flag is an error rather than a silently ignored setting. ``default.toml`` in
this folder documents every key; a test checks it equals these defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from anonstream.stream.transport import DEFAULT_FRAME_HWM, DEFAULT_LINGER_MS, DEFAULT_LIVE_DEPTH
from anonstream.stream.wire import STREAM_ID


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class SourceSpec(_Section):
    """One input: a video file, an image folder, a webcam or an RTSP URL."""

    uri: str = Field(min_length=1)
    id: str | None = Field(default=None, pattern=f"^{STREAM_ID.pattern}$")


class CaptureConfig(_Section):
    realtime: bool = False
    stills: bool = False
    folder_fps: float = Field(default=30.0, gt=0, le=1000)
    rtsp_transport: Literal["tcp", "udp"] = "tcp"
    open_timeout_s: float = Field(default=10.0, gt=0)
    stall_timeout_s: float = Field(default=5.0, gt=0)
    reconnect: bool = True
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=10.0, gt=0)
    give_up_s: float = Field(default=0.0, ge=0)
    linger_s: float = Field(default=30.0, ge=0)
    bind: str = "tcp://*:5555"


class DetectorConfig(_Section):
    model: Path | None = None
    device: Literal["auto", "cpu", "cuda", "tensorrt"] = "auto"
    device_id: int = Field(default=0, ge=0)
    cudnn_algo_search: Literal["exhaustive", "heuristic", "default"] = "heuristic"
    tensorrt_fp16: bool = True
    tensorrt_cache: Path | None = None
    max_side: int = Field(default=640, ge=0)
    threshold: float = Field(default=0.11, gt=0, lt=1)
    nms_iou: float = Field(default=0.3, gt=0, le=1)
    threads: int = Field(default=0, ge=0)
    tile_scale: float = Field(default=2.0, ge=0, le=4)
    tile_size: int = Field(default=512, ge=32)
    tile_overlap: int = Field(default=64, ge=0)
    tiles_per_frame: int = Field(default=0, ge=0)
    batch_size: int = Field(default=0, ge=0, le=64)
    batch_wait_ms: float = Field(default=0.0, ge=0, le=1000)

    @field_validator("max_side", "tile_size")
    @classmethod
    def _multiple_of_32(cls, value: int) -> int:
        if value and (value < 32 or value % 32):
            raise ValueError("must be 0 (native resolution) or a multiple of 32, at least 32")
        return value

    @model_validator(mode="after")
    def _overlap_fits(self) -> DetectorConfig:
        if self.tile_overlap >= self.tile_size // 2:
            raise ValueError(
                f"tile_overlap ({self.tile_overlap}) must be less than half of tile_size ({self.tile_size})"
            )
        return self


class TrackerConfig(_Section):
    hold_frames: int = Field(default=15, ge=0)
    grow: float = Field(default=0.05, ge=0, le=1)
    match_iou: float = Field(default=0.2, gt=0, le=1)


class MaskConfig(_Section):
    mode: Literal["blur", "pixelate", "solid"] = "blur"
    shape: Literal["box", "ellipse"] = "box"
    scale: float = Field(default=1.3, ge=1.0, le=4.0)
    blocks: int = Field(default=8, ge=2, le=64)
    color: tuple[int, int, int] = (0, 0, 0)

    @field_validator("color")
    @classmethod
    def _byte_range(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(not 0 <= c <= 255 for c in value):
            raise ValueError("each colour component must be within 0..255")
        return value


class WorkerConfig(_Section):
    count: int = Field(default=2, ge=1, le=64)
    inputs: list[str] = ["tcp://127.0.0.1:5555"]
    output: str = "tcp://127.0.0.1:5600"
    max_restarts: int = Field(default=5, ge=0)
    restart_window_s: float = Field(default=60.0, gt=0)


class SequencerConfig(_Section):
    loss_timeout_s: float = Field(default=5.0, gt=0)
    max_pending: int = Field(default=64, ge=1)


class RecordConfig(_Section):
    dir: Path | None = None
    format: Literal["auto", "mp4", "images", "null"] = "auto"
    codec: str = "libx264"
    crf: int = Field(default=20, ge=0, le=51)
    preset: str = "veryfast"
    fragmented: bool = True
    keyframe_interval_s: float = Field(default=1.0, gt=0, le=60)
    bind: str = "tcp://*:5600"
    drain_timeout_s: float = Field(default=30.0, gt=0)


class TransportConfig(_Section):
    frame_hwm: int = Field(default=DEFAULT_FRAME_HWM, ge=1)
    live_depth: int = Field(default=DEFAULT_LIVE_DEPTH, ge=1, le=64)
    linger_ms: int = Field(default=DEFAULT_LINGER_MS, ge=0)


class MetricsConfig(_Section):
    jsonl: Path | None = None
    summary_json: Path | None = None


Preset = Literal["fast", "balanced", "max-privacy"]
PRESETS: tuple[Preset, ...] = ("fast", "balanced", "max-privacy")
DEFAULT_PRESET: Preset = "balanced"


class Settings(_Section):
    """All of anonstream's settings; each CLI flag overrides one key."""

    preset: Preset = DEFAULT_PRESET
    sources: list[SourceSpec] = []
    capture: CaptureConfig = CaptureConfig()
    detector: DetectorConfig = DetectorConfig()
    mask: MaskConfig = MaskConfig()
    worker: WorkerConfig = WorkerConfig()
    sequencer: SequencerConfig = SequencerConfig()
    tracker: TrackerConfig = TrackerConfig()
    record: RecordConfig = RecordConfig()
    transport: TransportConfig = TransportConfig()
    metrics: MetricsConfig = MetricsConfig()

    @model_validator(mode="after")
    def _unique_stream_ids(self) -> Settings:
        ids = [s.id for s in self.sources if s.id is not None]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"stream ids must be unique, repeated: {', '.join(duplicates)}")
        return self
