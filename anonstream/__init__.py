"""anonstream: real-time anonymization of faces and licence plates in camera feeds.

The public surface is what ``__all__`` names; every other module is internal. The
library loads its models and ONNX Runtime only when ``Anonymizer`` is first used,
so that ``import anonstream`` stays cheap and the CLI can check the install first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from anonstream.errors import AnonstreamError, ConfigError

if TYPE_CHECKING:
    from anonstream.api import AnonymizationError, Anonymized, Anonymizer, FileResult
    from anonstream.stream.detections import Detections

__version__ = "0.1.0"
__all__ = [
    "AnonstreamError",
    "AnonymizationError",
    "Anonymized",
    "Anonymizer",
    "ConfigError",
    "Detections",
    "FileResult",
    "__version__",
]
_LAZY = {
    "AnonymizationError": "anonstream.api",
    "Anonymized": "anonstream.api",
    "Anonymizer": "anonstream.api",
    "FileResult": "anonstream.api",
    "Detections": "anonstream.stream.detections",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'anonstream' has no attribute {name!r}")
