"""Reading ONNX models and loading them into onnxruntime on an explicitly chosen device.

The chosen provider is checked on the created session, never assumed:
onnxruntime silently falls back to the CPU when CUDA or TensorRT cannot load,
and prints its own error dumps while doing so. Those dumps are captured here
and turned into one line in a DeviceError, or a debug log.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

from anonstream.config import RuntimeConfig
from anonstream.errors import DeviceError, ModelError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"


def read_model(path: Path) -> onnx.ModelProto:
    """An ONNX model from a file, or one clear error saying why not."""
    try:
        return onnx.load(os.fspath(path))
    except FileNotFoundError:
        raise ModelError(f"model file {path} does not exist") from None
    except IsADirectoryError:
        raise ModelError(f"model file {path} is a folder, not an ONNX file") from None
    except Exception as exc:  # onnx raises protobuf's DecodeError and others for non-models
        raise ModelError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc})") from None


@contextlib.contextmanager
def _captured_output() -> Iterator[list[str]]:
    """Collect what native code writes to fds 1 and 2 while inside."""
    captured: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            captured.append(sink.read().decode("utf-8", "replace"))


def _reason(output: str, gpu_build: bool) -> str:
    if not gpu_build:
        return (
            "the installed onnxruntime is the CPU build (pip uninstall -y onnxruntime && pip install "
            "'anonstream[gpu]'; on a Jetson, NVIDIA's onnxruntime-gpu wheel)"
        )
    for line in output.splitlines():
        if missing := re.search(r"with error: (\S+): cannot open shared object file", line):
            driver = " (the NVIDIA driver's)" if missing.group(1).startswith("libcuda.so") else ""
            return f"{missing.group(1)}{driver} not found"
        if "Failed to load library" in line or "Please install" in line or "CUDA failure" in line:
            return line.split("FAIL :")[-1].strip()[:300]
    return "onnxruntime could not start it"


@functools.cache
def _preload_gpu_libraries() -> None:
    """Load CUDA and cuDNN from the nvidia pip packages that [gpu] installs, if there; else the system's.

    onnxruntime-gpu looks for them only on the system's library path unless
    asked. Once per process: the libraries stay loaded.
    """
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime 1.21 and newer
    if preload is None:
        return
    with _captured_output() as output:
        try:
            preload()
        except Exception as exc:  # a library it cannot load: the session says what that costs
            log.debug("onnxruntime.preload_dlls failed: %s", exc)
    if output and output[0].strip():
        log.debug("onnxruntime said while loading the GPU libraries:\n%s", output[0].strip())


def tensorrt_cache(config: RuntimeConfig) -> Path:
    """Where built TensorRT engines are kept: building one takes minutes, loading it seconds."""
    if config.tensorrt_cache is not None:
        return config.tensorrt_cache
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "anonstream" / "tensorrt"


def provider_chain(config: RuntimeConfig) -> list[tuple[str, dict[str, Any]]]:
    """The providers to try, best first, with the options that matter for each."""
    if config.device == "cpu":
        return [(CPU, {})]
    cuda = (CUDA, {"device_id": config.device_id, "cudnn_conv_algo_search": config.cudnn_algo_search.upper()})
    if config.device in ("cuda", "auto"):
        return [cuda, (CPU, {})]
    trt = {
        "device_id": config.device_id,
        "trt_fp16_enable": config.tensorrt_fp16,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": os.fspath(tensorrt_cache(config)),
    }
    return [(TENSORRT, trt), cuda, (CPU, {})]


def create_session(model: bytes, config: RuntimeConfig, threads: int = 0) -> tuple[ort.InferenceSession, str, str]:
    """A session on the device ``config`` asks for, the provider it really runs on, and why not the GPU.

    The last is empty unless ``--device auto`` fell back to the CPU where the
    GPU build is installed: then it is onnxruntime's reason, in one line.
    """
    device = config.device
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    chain = provider_chain(config)
    available = set(ort.get_available_providers())
    gpu_build = CUDA in available
    if gpu_build and device != "cpu":
        _preload_gpu_libraries()
    chain = [(name, opts) for name, opts in chain if name in available or name == CPU]
    try:
        with _captured_output() as output:
            session = ort.InferenceSession(
                model, options, providers=[n for n, _ in chain], provider_options=[o for _, o in chain]
            )
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0][:300]}") from None
    if output and output[0].strip():
        log.debug("onnxruntime said while creating the session:\n%s", output[0].strip())
    provider = session.get_providers()[0]
    wanted = {"cuda": CUDA, "tensorrt": TENSORRT}.get(device)
    if wanted is not None and provider != wanted:
        raise DeviceError(
            f"--device {device} was requested but {wanted} is not usable here: {_reason(''.join(output), gpu_build)}."
            " Use --device auto or --device cpu, or install what it needs (see the README's Install section)."
        )
    if device == "auto" and gpu_build and provider == CPU:
        return session, provider, f"no GPU: {_reason(''.join(output), gpu_build)}"
    return session, provider, ""
