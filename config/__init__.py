"""Configuration: one validated model, a documented default file, overrides."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from anonstream.config.model import (
    DEFAULT_PRESET,
    PRESETS,
    CaptureConfig,
    DetectorConfig,
    MaskConfig,
    MetricsConfig,
    RecordConfig,
    SequencerConfig,
    Settings,
    SourceSpec,
    TrackerConfig,
    TransportConfig,
    WorkerConfig,
)
from anonstream.errors import ConfigError

__all__ = [
    "PRESETS",
    "CaptureConfig",
    "DetectorConfig",
    "MaskConfig",
    "MetricsConfig",
    "RecordConfig",
    "SequencerConfig",
    "Settings",
    "SourceSpec",
    "TrackerConfig",
    "TransportConfig",
    "WorkerConfig",
    "default_config_text",
    "load_settings",
    "parse_assignment",
]


def default_config_text() -> str:
    """The documented default file shipped with the package."""
    return resources.files("anonstream.config").joinpath("default.toml").read_text(encoding="utf-8")


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_assignment(text: str) -> dict[str, Any]:
    """Turn ``section.key=value`` (value in TOML syntax, bare words as strings) into a nested dict."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, for example --set detector.threshold=0.3")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    nested: dict[str, Any] = {}
    cursor = nested
    parts = key.split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return nested


def _describe(error: ValidationError, origin: str) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{origin}: unknown key '{where}' (see `anonstream config` for every valid key)"
    value = first.get("input")
    return f"{origin}: {where} = {value!r}: {first['msg']}"


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
        data = _merge(data, update)
    preset = data.get("preset", DEFAULT_PRESET)
    data = _merge(preset_data(preset if isinstance(preset, str) else DEFAULT_PRESET), data)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin)) from None
