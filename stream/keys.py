"""CurveZMQ key files: made by ``anonstream keys NAME``, read at a role's start into ``transport.Curve``.

A pair is two files in ZeroMQ's certificate format (pyzmq's ``zmq.auth``):
``NAME.key`` (public: copy it to the hosts that talk to this one) and
``NAME.key_secret`` (secret: readable by its owner only, never copied).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import zmq.auth

from anonstream.config import SecurityConfig
from anonstream.errors import ConfigError
from anonstream.stream.transport import Curve, Network

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"


def make_keypair(folder: Path, name: str) -> tuple[Path, Path]:
    """Write NAME.key and NAME.key_secret (mode 0600) into ``folder``; never over an existing pair."""
    public, secret = folder / f"{name}{PUBLIC_SUFFIX}", folder / f"{name}{SECRET_SUFFIX}"
    for path in (public, secret):
        if path.exists():
            raise ConfigError(f"{path} already exists: choose another name, or remove the old pair first")
    folder.mkdir(parents=True, exist_ok=True)
    old = os.umask(0o077)  # the secret file is never readable by others, not even for a moment
    try:
        made_public, made_secret = zmq.auth.create_certificates(str(folder), name)
    finally:
        os.umask(old)
    Path(made_secret).chmod(0o600)
    Path(made_public).chmod(0o644)
    return Path(made_public), Path(made_secret)


def _public(path: Path, what: str) -> bytes:
    try:
        key, _ = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what}: {path} is not a public key file made by `anonstream keys` ({exc})") from None
    return key


def load_curve(config: SecurityConfig) -> Curve | None:
    """The keys the config names, checked: None when it names none (only ipc://, or --insecure-plaintext)."""
    if config.secret_key is None:
        if config.allow is not None or config.servers:
            raise ConfigError("security.allow and security.servers need security.secret_key: this role's own key")
        return None
    path = config.secret_key
    try:
        mode = path.stat().st_mode
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"security.secret_key: cannot read {path} ({exc})") from None
    if secret is None:
        raise ConfigError(f"security.secret_key: {path} holds a public key only; give the .key_secret file")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"security.secret_key: {path} is readable by others; chmod 600 {path}")
    allowed: set[bytes] = set()
    if config.allow is not None:
        if not config.allow.is_dir():
            raise ConfigError(f"security.allow: {config.allow} is not a folder of public keys")
        allowed = {_public(key, "security.allow") for key in sorted(config.allow.glob(f"*{PUBLIC_SUFFIX}"))}
        if not allowed:
            raise ConfigError(f"security.allow: {config.allow} holds no public key files (*{PUBLIC_SUFFIX})")
    servers = {endpoint: _public(key, f"security.servers.{endpoint}") for endpoint, key in config.servers.items()}
    return Curve(public, secret, frozenset(allowed), servers)


def network_for(config: SecurityConfig) -> Network:
    """The process's one ZeroMQ context, with the keys ``config`` names (checked now, before any socket)."""
    return Network(load_curve(config), plaintext_ok=config.insecure_plaintext)
