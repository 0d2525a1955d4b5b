from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from anonstream.config import PRESETS, Settings, default_config_text, load_settings, parse_assignment
from anonstream.errors import ConfigError


def test_documented_default_file_equals_the_model_defaults() -> None:
    assert Settings.model_validate(tomllib.loads(default_config_text())) == Settings()


def _tables(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, type[BaseModel]]]:
    """Every table of the config and its model, by TOML name."""
    yield prefix, model
    for key, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _tables(annotation, f"{prefix}.{key}".lstrip("."))


def test_documented_default_file_names_every_key() -> None:
    text = default_config_text()
    tables = dict(_tables(Settings, ""))
    for name, section in Settings().detectors.items():
        tables.update(_tables(type(section), f"detectors.{name}"))
    for table, model in tables.items():
        if table:
            assert f"[{table}]" in text, f"[{table}] is not documented in default.toml"
        body = re.split(rf"^\[{re.escape(table)}\].*$", text, maxsplit=1, flags=re.M)[-1] if table else text
        for key, field in model.model_fields.items():
            annotation = field.annotation
            nested = isinstance(annotation, type) and issubclass(annotation, BaseModel)
            if key == "by_class":
                assert f"[{table}.by_class." in text, f"{table}.by_class has no example"
            elif key == "detectors":
                assert "[detectors.mine]" in text  # how to add a model of your own
            elif not nested:
                assert re.search(rf"^#? ?{key} =", body.split("\n[", 1)[0], re.M), f"{table}.{key} is not documented"


def test_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[detectors.faces]\nthreshold = 0.5\n[mask]\nmode = "solid"\n')
    settings = load_settings(path, [parse_assignment("mask.mode=pixelate"), {"worker": {"count": 3}}])
    assert settings.detectors["faces"].threshold == 0.5
    assert settings.mask.mode == "pixelate"
    assert settings.worker.count == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[detectors.faces]\nthreshhold = 0.5\n", "unknown key 'detectors.faces.threshhold'"),
        ("[nope]\na = 1\n", "unknown key 'nope'"),
        ("[worker]\ncount = 0\n", "worker.count"),
        ("[detectors.faces.video]\nmax_side = 100\n", "multiple of 32"),
        ('detect = ["faces", "plate"]\n', "unknown detector 'plate'; the configured ones are faces, plates"),
        ("detect = []\n", "detect names no detector"),
        ('[detectors.mine]\nfamily = "ssd"\n', "detectors.mine: Input tag 'ssd' found using 'family' does not match"),
        ('[detectors.mine]\nfamily = "yolo"\nmodel = "m.onnx"\nlabels = ["Face"]\n', "is not a class name"),
        (
            '[mask.by_class.plat]\nmode = "solid"\n',
            "mask.by_class: unknown class 'plat'; the configured detectors find face, plate",
        ),
        ("[tracker.by_class.car]\nhold_frames = 3\n", "tracker.by_class: unknown class 'car'"),
        ("[detectors.plates.stills]\ntiles = 2\n", "stills are looked at once"),
        ('[detectors.plates]\ntext = false\nshapes = "never"\n', "the plates detector looks for nothing"),
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
    assert parse_assignment("detectors.faces.threshold=0.3") == {"detectors": {"faces": {"threshold": 0.3}}}
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
        assert settings.detectors["faces"] != Settings().detectors["faces"]
        assert settings.detectors["plates"] == Settings().detectors["plates"]


def test_a_key_set_explicitly_wins_over_the_preset(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('preset = "max-privacy"\n[tracker]\nhold_frames = 7\n')
    settings = load_settings(path, [parse_assignment("detectors.faces.threshold=0.3")])
    assert settings.detectors["faces"].video.tiles == 1  # from the preset
    assert settings.tracker.hold_frames == 7  # the file wins
    assert settings.detectors["faces"].threshold == 0.3  # the command line wins
    assert load_settings(None, [{"preset": "fast"}]).detectors["faces"].stills.tile_scale == 1.0


def test_a_detector_section_changes_only_the_keys_it_names(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[detectors.plates]\nshapes = "never"\n[detectors.plates.video]\ntiles = 2\n')
    plates = load_settings(path).detectors["plates"]
    assert plates.shapes == "never" and plates.video.tiles == 2  # what the file says
    assert plates.text and plates.video.tile_size == 256 and plates.stills.max_side == 1280  # the rest: built in


def test_a_model_of_your_own_is_a_section_named_in_detect(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        [
            {"detectors": {"mine": {"family": "yolo", "model": "m.onnx", "labels": ["plate", "", "head"]}}},
            {"detect": ["faces", "mine"], "mask": {"by_class": {"head": {"mode": "solid"}}}},
        ],
    )
    assert list(settings.active_detectors) == ["faces", "mine"]
    assert settings.detectors["mine"].classes == ("plate", "head")
    assert settings.mask.style("head").mode == "solid" and settings.mask.style("plate").mode == "blur"


def test_each_class_is_masked_at_the_largest_scale_of_the_detectors_that_find_it() -> None:
    settings = load_settings(
        None,
        [
            {"detectors": {"mine": {"family": "yolo", "model": "m.onnx", "labels": ["face"], "mask_scale": 1.1}}},
            {"detect": ["faces", "plates", "mine"]},
        ],
    )
    assert settings.mask_scales == {"face": (1.3, 1.3), "plate": (1.0, 1.0)}
    assert load_settings(None, [{"detect": ["plates"]}]).mask_scales == {"plate": (1.0, 1.0)}


def test_the_default_detects_faces_and_plates() -> None:
    assert Settings().detect == ["faces", "plates"]
    assert Settings().tracker.style("plate").hold_frames > Settings().tracker.hold_frames


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="fast, balanced, max-privacy"):
        load_settings(None, [{"preset": "paranoid"}])
