from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from anonstream.config import PRESETS, Settings, default_config_text, load_settings, parse_assignment
from anonstream.errors import ConfigError


def test_documented_default_file_equals_the_model_defaults() -> None:
    assert Settings.model_validate(tomllib.loads(default_config_text())) == Settings()


def test_documented_default_file_names_every_key() -> None:
    text = default_config_text()
    for section, model in Settings.model_fields.items():
        if section in ("sources", "preset"):
            assert f"{section} =" in text
            continue
        assert f"[{section}]" in text
        for key in model.annotation.model_fields:  # type: ignore[union-attr]
            assert f"{key} =" in text, f"{section}.{key} is not documented in default.toml"


def test_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[detector]\nthreshold = 0.5\n[mask]\nmode = "solid"\n')
    settings = load_settings(path, [parse_assignment("mask.mode=pixelate"), {"worker": {"count": 3}}])
    assert settings.detector.threshold == 0.5
    assert settings.mask.mode == "pixelate"
    assert settings.worker.count == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[detector]\nthreshhold = 0.5\n", "unknown key 'detector.threshhold'"),
        ("[nope]\na = 1\n", "unknown key 'nope'"),
        ("[worker]\ncount = 0\n", "worker.count"),
        ("[detector]\nmax_side = 100\n", "multiple of 32"),
        ("[mask]\ncolor = [0, 0, 300]\n", "0..255"),
        ("[detector\n", "not valid TOML"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_settings(path)


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(Path("/nonexistent/anonstream.toml"))


def test_set_parses_toml_values_and_bare_words() -> None:
    assert parse_assignment("detector.threshold=0.3") == {"detector": {"threshold": 0.3}}
    assert parse_assignment("mask.mode=solid") == {"mask": {"mode": "solid"}}
    assert parse_assignment("mask.color=[1,2,3]") == {"mask": {"color": [1, 2, 3]}}
    with pytest.raises(ConfigError):
        parse_assignment("novalue")


def test_duplicate_stream_ids_rejected() -> None:
    with pytest.raises(ConfigError, match="unique"):
        load_settings(None, [{"sources": [{"uri": "a.mp4", "id": "x"}, {"uri": "b.mp4", "id": "x"}]}])


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_is_valid_and_changes_only_what_it_says(name: str) -> None:
    settings = load_settings(None, [{"preset": name}])
    assert settings.preset == name
    if name == "balanced":
        assert settings == Settings()  # the documented defaults are the balanced preset
    else:
        assert settings.detector != Settings().detector


def test_a_key_set_explicitly_wins_over_the_preset(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('preset = "max-privacy"\n[tracker]\nhold_frames = 7\n')
    settings = load_settings(path, [parse_assignment("detector.threshold=0.3")])
    assert settings.detector.tiles_per_frame == 1  # from the preset
    assert settings.tracker.hold_frames == 7  # the file wins
    assert settings.detector.threshold == 0.3  # the command line wins
    assert load_settings(None, [{"preset": "fast"}]).detector.tile_scale == 1.0


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="fast, balanced, max-privacy"):
        load_settings(None, [{"preset": "paranoid"}])
