"""Credentials out of what anonstream shows: the one place they are taken out.

Camera URLs carry passwords (rtsp://user:password@camera/...). Every log line
(through ``process.Redacting``, the filter on every handler), every error the
CLI prints and the process title go through ``redact``; stream ids are made
without the user part (sources.default_stream_id), so metrics, the JSONL,
the summary and file names never had one.
"""

from __future__ import annotations

import re

_CREDENTIALS = re.compile(r"\b([a-z][a-z0-9+.-]*://)[^@/\s'\"]*@", re.IGNORECASE)
_SECRET_QUERY = re.compile(r"\b((?:password|passwd|pwd|pass|token|secret|auth)=)[^&\s'\"]*", re.IGNORECASE)


def redact(text: str) -> str:
    """Any text (a uri, a log line, an error) with every URL's user name and password, and any
    password-like query value, replaced by ***: the one place credentials are taken out."""
    return _SECRET_QUERY.sub(r"\1***", _CREDENTIALS.sub(r"\1***@", text))
