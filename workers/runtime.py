"""Reading ONNX models and loading them into onnxruntime on an explicitly chosen device.

The chosen provider is checked on the created session, never assumed:
onnxruntime silently falls back to the CPU when CUDA or TensorRT cannot load,
and prints its own error dumps while doing so. Those dumps are captured here
and turned into one line in a DeviceError, or a debug log.
"""

from __future__ import annotations

import contextlib
import logging
import os
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


def _reason(output: str) -> str:
    for line in output.splitlines():
        if "Failed to load library" in line or "Please install" in line or "CUDA failure" in line:
            return line.split("FAIL :")[-1].strip()[:300]
    return "onnxruntime could not start it"


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


def create_session(model: bytes, config: RuntimeConfig, threads: int = 0) -> tuple[ort.InferenceSession, str]:
    """A session on the device ``config`` asks for, and the provider it really runs on."""
    device = config.device
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    chain = provider_chain(config)
    available = set(ort.get_available_providers())
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
            f"--device {device} was requested but {wanted} is not usable here: {_reason(''.join(output))}. "
            "Use --device auto or --device cpu, or install the CUDA/TensorRT libraries onnxruntime-gpu needs."
        )
    return session, provider
