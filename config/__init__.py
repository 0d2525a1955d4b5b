"""Configuration: one validated model, a documented default file, overrides."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from anonstream.config.model import (
    BUILT_IN_DETECTORS,
    DEFAULT_PRESET,
    GPU_BATCH,
    PRESETS,
    AnyDetector,
    CaptureConfig,
    CenterFaceConfig,
    MaskConfig,
    MaskMode,
    MaskStyle,
    MetricsConfig,
    PlatesConfig,
    RecordConfig,
    RuntimeConfig,
    SecurityConfig,
    SequencerConfig,
    ServeConfig,
    Settings,
    SourceSpec,
    TrackerConfig,
    TrackerStyle,
    TransportConfig,
    Views,
    WorkerConfig,
    YoloConfig,
    deep_merge,
)
from anonstream.errors import ConfigError

__all__ = [
    "BUILT_IN_DETECTORS",
    "GPU_BATCH",
    "PRESETS",
    "AnyDetector",
    "CaptureConfig",
    "CenterFaceConfig",
    "MaskConfig",
    "MaskMode",
    "MaskStyle",
    "MetricsConfig",
    "PlatesConfig",
    "RecordConfig",
    "RuntimeConfig",
    "SecurityConfig",
    "SequencerConfig",
    "ServeConfig",
    "Settings",
    "SourceSpec",
    "TrackerConfig",
    "TrackerStyle",
    "TransportConfig",
    "Views",
    "WorkerConfig",
    "YoloConfig",
    "default_config_text",
    "load_settings",
    "nested",
    "parse_assignment",
]


def default_config_text() -> str:
    """The documented default file shipped with the package."""
    return resources.files("anonstream.config").joinpath("default.toml").read_text(encoding="utf-8")


def parse_assignment(text: str) -> dict[str, Any]:
    """Turn ``section.key=value`` (value in TOML syntax, bare words as strings) into a nested dict."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, for example --set detectors.faces.threshold=0.3")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return nested(key, value)


def nested(key: str, value: Any) -> dict[str, Any]:
    """``"a.b.c", v`` as ``{"a": {"b": {"c": v}}}``: one dotted key as a config layer."""
    head, _, rest = key.partition(".")
    return {head: nested(rest, value) if rest else value}


FAMILIES = frozenset(section.model_fields["family"].default for section in get_args(AnyDetector))


def _describe(error: ValidationError, origin: str) -> str:
    first = error.errors()[0]
    loc = list(first["loc"])
    if loc[:1] == ["detectors"] and len(loc) > 2 and loc[2] in FAMILIES:
        del loc[2]  # the family pydantic chose the section's model by: not a key the user wrote
    where = ".".join(str(p) for p in loc)
    if first["type"] == "extra_forbidden":
        return f"{origin}: unknown key '{where}' (see `anonstream config` for every valid key)"
    message = str(first["msg"]).removeprefix("Value error, ")
    if not where:  # a rule across keys: its message names them
        return f"{origin}: {message}"
    if first["type"] == "union_tag_invalid":
        return f"{origin}: {where}: {message} (see `anonstream config`)"
    return f"{origin}: {where} = {first.get('input')!r}: {message}"


def preset_data(name: str) -> dict[str, Any]:
    """The keys a preset changes from the defaults (``config/presets/NAME.toml``)."""
    if name not in PRESETS:
        raise ConfigError(f"preset {name!r} does not exist; choose one of {', '.join(PRESETS)}")
    text = resources.files("anonstream.config").joinpath("presets", f"{name}.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def load_settings(path: Path | None = None, overrides: list[dict[str, Any]] | None = None) -> Settings:
    """Defaults, then the preset named, then the user's file, then command-line overrides, validated once."""
    data: dict[str, Any] = {}
    origin = "command line"
    if path is not None:
        origin = str(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        try:
            Settings.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, str(path))) from None
        origin = "command line"
    for update in overrides or []:
        data = deep_merge(data, update)
    preset = data.get("preset", DEFAULT_PRESET)
    data = deep_merge(preset_data(preset if isinstance(preset, str) else DEFAULT_PRESET), data)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin)) from None
