"""Every exception anonstream raises on purpose, in one place.

The CLI turns any :class:`AnonstreamError` into one line on stderr and exit
status 2, so the message must say what was wrong and what to do about it.
Anything else that escapes is a bug and keeps its traceback.

    AnonstreamError
    ├── InstallError         the installed packages cannot work together (two ONNX Runtimes...)
    ├── ConfigError          bad config file, key or flag value
    ├── SourceError          a source that cannot be opened or read
    ├── ModelError           the ONNX model cannot be loaded or run
    │   └── DeviceError      the requested execution provider is not usable
    ├── RecorderError        output cannot be written
    │   └── NotAnonymizedError   a frame without the anonymized flag reached a recorder
    ├── WireError            a malformed message on a frame socket
    └── StageError           a pipeline process failed to start or died
"""

from __future__ import annotations


class AnonstreamError(Exception):
    """Base class: an expected failure with a message meant for the user."""


class InstallError(AnonstreamError):
    """What pip installed cannot work: no ONNX Runtime, two of them, an OpenCV that cannot load."""


class ConfigError(AnonstreamError):
    """Invalid configuration: unknown key, wrong type, out-of-range value."""


class SourceError(AnonstreamError):
    """A source (file, folder, webcam, RTSP URL) cannot be opened or decoded."""


class ModelError(AnonstreamError):
    """The detection model cannot be loaded or produced unusable output."""


class DeviceError(ModelError):
    """The requested device (cuda, tensorrt) is not available on this machine."""


class RecorderError(AnonstreamError):
    """Anonymized frames cannot be written where the user asked."""


class NotAnonymizedError(RecorderError):
    """A frame not flagged as anonymized reached a recorder: refused, never written."""


class WireError(AnonstreamError):
    """A message on a frame socket is malformed; it is rejected and counted."""


class StageError(AnonstreamError):
    """A pipeline process could not start or stopped unexpectedly."""
