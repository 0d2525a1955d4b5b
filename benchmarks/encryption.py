"""What CurveZMQ costs: the same links encrypted and in plaintext, on loopback TCP, alternating.

    python benchmarks/encryption.py [--frames 300] [--video FILE] [--repeats 2] [--json FILE]

- transport: 1080p frames (6.2 MB each) from one Network's sender to another's receiver, nothing else
  (the trivial model: none), frames per second and CPU seconds per frame of both ends together;
- pipeline: `anonstream capture`, `worker` and `record` as three processes over TCP, with keys made by
  `anonstream keys` or with --insecure-plaintext, on webcam_face_608x1080.mp4 with the default detectors;
  frames per second between the first and the last frame recorded (from the record role's JSONL).
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import ANONSTREAM, EVAL, RESULTS, console, describe, machine, need, write_json
from rich.table import Table

from anonstream.config import SecurityConfig
from anonstream.stream.keys import make_keypair, network_for
from anonstream.stream.wire import Flag, FrameHeader, FrameMessage


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keys(folder: Path) -> Path:
    for name in ("capture", "worker", "record"):
        make_keypair(folder, name)
    allow = folder / "allow"
    allow.mkdir()
    (allow / "worker.key").write_bytes((folder / "worker.key").read_bytes())
    return allow


def _transport(frames: int, keys: Path | None) -> dict[str, float]:
    endpoint = f"tcp://127.0.0.1:{_port()}"
    if keys is not None:
        server = SecurityConfig(secret_key=keys / "record.key_secret", allow=keys / "allow")
        client = SecurityConfig(secret_key=keys / "worker.key_secret", servers={endpoint: keys / "record.key"})
    else:
        server = client = SecurityConfig(insecure_plaintext=True)
    pixels = np.random.default_rng(1).integers(0, 256, (1080, 1920, 3), np.uint8)
    received = 0
    with network_for(server) as rx_net, rx_net.receiver(hwm=8).bind(endpoint) as receiver:

        def receive() -> None:
            nonlocal received
            while received < frames:
                if receiver.receive(1000) is not None:
                    received += 1

        thread = threading.Thread(target=receive)
        thread.start()
        with network_for(client) as tx_net, tx_net.sender(hwm=8).connect(endpoint) as sender:
            cpu, start = time.process_time(), time.perf_counter()
            for seq in range(frames):
                header = FrameHeader("b", seq, seq, seq, (1, 30), (30, 1), pixels.shape, "uint8", "bgr", Flag.NONE)
                sender.send(FrameMessage(header, pixels))
            thread.join()
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"fps": frames / wall, "cpu_ms_per_frame": cpu / frames * 1000}


def _pipeline(video: Path, scratch: Path, keys: Path | None) -> dict[str, float]:
    cap, rec = f"tcp://127.0.0.1:{_port()}", f"tcp://127.0.0.1:{_port()}"
    jsonl = scratch / "frames.jsonl"
    jsonl.unlink(missing_ok=True)

    def security(role: str, servers: dict[str, str] | None = None, allow: bool = False) -> list[str]:
        if keys is None:
            return ["--insecure-plaintext"]
        out = ["--secret-key", str(keys / f"{role}.key_secret")] + (["--allow", str(keys / "allow")] if allow else [])
        return out + [f"--server-key={e}={keys / f'{s}.key'}" for e, s in (servers or {}).items()]

    def start(*args: str) -> subprocess.Popen[str]:
        command = [*ANONSTREAM, *args, "-q"]
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    record_args = ["--bind", rec, "--record-format", "null", "--expect", "video", "--metrics-jsonl", str(jsonl)]
    record = start("record", *record_args, *security("record", allow=True))
    worker = start("worker", "--input", cap, "--output", rec, *security("worker", {cap: "capture", rec: "record"}))
    source = str(_source_config(scratch, video))
    capture = start("capture", "--bind", cap, "--config", source, *security("capture", allow=True))
    try:
        if capture.wait(600) != 0:
            raise SystemExit(f"capture failed: {capture.communicate()[1][-2000:]}")
        if record.wait(600) != 0:
            raise SystemExit(f"record failed: {record.communicate()[1][-2000:]}")
    finally:
        worker.send_signal(signal.SIGINT)
        worker.wait(60)
        for process in (capture, record, worker):
            if process.poll() is None:
                process.kill()
    stamps = [
        json.loads(line)["stamps_ns"]["recorded"] for line in jsonl.read_text().splitlines() if "stamps_ns" in line
    ]
    return {"fps": (len(stamps) - 1) / ((max(stamps) - min(stamps)) / 1e9), "frames": len(stamps)}


def _source_config(scratch: Path, video: Path) -> Path:
    """The clip as stream "video", whatever its file is called."""
    path = scratch / "source.toml"
    path.write_text(f'[[sources]]\nuri = "{video.resolve()}"\nid = "video"\n')
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--video", type=Path, default=EVAL / "videos" / "webcam_face_608x1080.mp4")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=RESULTS / "encryption.json")
    args = parser.parse_args()
    need(args.video, "video")
    info = machine()
    out = console()
    runs: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="anonstream-encryption-") as folder:
        scratch = Path(folder)
        keys = scratch / "keys"
        _keys(keys)
        for repeat in range(args.repeats):
            order = [True, False] if repeat % 2 == 0 else [False, True]
            for encrypted in order:
                key = f"transport, {'CurveZMQ' if encrypted else 'plaintext'}"
                runs.setdefault(key, []).append(result := _transport(args.frames, keys if encrypted else None))
                out.print(f"  {key}: {result}")
            for encrypted in order:
                key = f"pipeline, {'CurveZMQ' if encrypted else 'plaintext'}"
                runs.setdefault(key, []).append(result := _pipeline(args.video, scratch, keys if encrypted else None))
                out.print(f"  {key}: {result}")
    medians: dict[str, dict[str, Any]] = {
        key: {m: statistics.median(r[m] for r in rs) for m in rs[0]} for key, rs in runs.items()
    }
    table = Table(title=f"CurveZMQ against plaintext, loopback TCP, median of {args.repeats}; {describe(info)}")
    for column in ("link", "fps", "CPU ms / frame", "encrypted / plaintext fps"):
        table.add_column(column, justify="left" if column == "link" else "right")
    ratios = {}
    for kind in ("transport", "pipeline"):
        plain, curve = medians[f"{kind}, plaintext"], medians[f"{kind}, CurveZMQ"]
        ratios[kind] = curve["fps"] / plain["fps"]
        for name, m in (("plaintext", plain), ("CurveZMQ", curve)):
            cpu = f"{m['cpu_ms_per_frame']:.1f}" if "cpu_ms_per_frame" in m else ""
            table.add_row(
                f"{kind}, {name}", f"{m['fps']:.1f}", cpu, f"{ratios[kind]:.3f}" if name != "plaintext" else ""
            )
    out.print(table)
    write_json(args.json, {"machine": info, "median": medians, "encrypted_over_plaintext": ratios, "runs": runs})
    out.print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
