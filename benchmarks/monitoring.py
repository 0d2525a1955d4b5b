"""What the live figures cost: the same runs with the monitor's port on (and watched) and off.

    python benchmarks/monitoring.py [--video FILE] [--live FILE] [--repeats 3] [--json FILE]

Each repetition runs, in alternating order (off, on, then on, off...):
- throughput: `anonstream run VIDEO --record DIR`, the default detectors, as fast as the workers go;
- live: `anonstream run LIVE --realtime --record DIR`, a 640x360 clip paced at its 30 fps.
"On" is `--metrics-port` with a viewer: a thread scrapes /metrics and /api/status once a second and
fetches the preview picture at its rate (4 a second), as Prometheus and an open preview page would.
Reports throughput (the run's own fps, start-up excluded) and end-to-end p99 latency, median over the
repetitions, on against off, and the machine. Defaults: webcam_face_608x1080.mp4 and hamilton_640x360.mp4
from ../shared/eval/videos (or $ANONSTREAM_EVAL/videos).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from common import ANONSTREAM, EVAL, RESULTS, console, describe, machine, need, write_json
from rich.table import Table

PREVIEW_FPS = 4.0


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _viewer(base: str, stop: threading.Event, counts: dict[str, int]) -> None:
    """Prometheus once a second, and a preview page open: status once a second, each picture 4 times."""
    tick, streams = 0, []
    while not stop.wait(1 / PREVIEW_FPS):
        paths = [f"preview/{name}.jpg" for name in streams]
        paths += ["metrics", "api/status"] if tick % round(PREVIEW_FPS) == 0 else []
        tick += 1
        for path in paths:
            try:
                with urllib.request.urlopen(base + path, timeout=5) as response:
                    body = response.read()
            except urllib.error.HTTPError:  # no picture yet
                continue
            except (ConnectionError, urllib.error.URLError):  # not listening yet, or gone
                continue
            kind = "preview" if path.startswith("preview/") else path
            counts[kind] = counts.get(kind, 0) + 1
            if path == "api/status":
                streams = [s["stream"] for s in json.loads(body)["streams"] if s["preview"]]


def _run(video: Path, scratch: Path, monitored: bool, live: bool) -> dict[str, Any]:
    summary = scratch / "summary.json"
    summary.unlink(missing_ok=True)
    argv = [*ANONSTREAM, "run", str(video), "--record", str(scratch / "out"), "--overwrite", "-q"]
    argv += ["--summary-json", str(summary)] + (["--realtime"] if live else [])
    counts: dict[str, int] = {}
    stop = threading.Event()
    viewer = None
    if monitored:
        port = _port()
        argv += ["--metrics-port", str(port)]
        viewer = threading.Thread(target=_viewer, args=(f"http://127.0.0.1:{port}/", stop, counts), daemon=True)
        viewer.start()
    result = subprocess.run(argv, capture_output=True, text=True)
    stop.set()
    if viewer is not None:
        viewer.join()
    if result.returncode != 0:
        raise SystemExit(f"anonstream failed on {video.name}: {result.stderr[-3000:]}")
    stream = json.loads(summary.read_text())["streams"][0]
    return {
        "fps": stream["fps"],
        "frames_out": stream["frames_out"],
        "dropped": stream["dropped"],
        "p99_ms": stream["latency_ms"]["end to end"][2],
        "requests": counts,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, default=EVAL / "videos" / "webcam_face_608x1080.mp4")
    parser.add_argument("--live", type=Path, default=EVAL / "videos" / "hamilton_640x360.mp4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=RESULTS / "monitoring.json")
    args = parser.parse_args()
    need(args.video, "video")
    need(args.live, "video")
    info = machine()
    out = console()
    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="anonstream-monitoring-") as folder:
        scratch = Path(folder)
        for repeat in range(args.repeats):
            order = [False, True] if repeat % 2 == 0 else [True, False]
            for kind, video, live in (("throughput", args.video, False), ("live", args.live, True)):
                for monitored in order:
                    key = f"{kind}, monitor {'on' if monitored else 'off'}"
                    run = _run(video, scratch, monitored, live)
                    runs.setdefault(key, []).append(run)
                    out.print(
                        f"  run {repeat + 1} {key}: {run['fps']:.2f} fps, {run['dropped']} dropped, "
                        f"p99 {run['p99_ms']:.0f} ms, requests {run['requests']}"
                    )
            time.sleep(1)
    medians = {
        key: {m: statistics.median(r[m] for r in rs) for m in ("fps", "p99_ms", "dropped")} for key, rs in runs.items()
    }
    table = Table(title=f"the monitor's cost, median of {args.repeats}; {describe(info)}")
    for column in ("run", "fps", "p99 ms", "dropped", "fps on / off", "p99 on / off"):
        table.add_column(column, justify="left" if column == "run" else "right")
    ratios = {}
    for kind in ("throughput", "live"):
        off, on = medians[f"{kind}, monitor off"], medians[f"{kind}, monitor on"]
        ratios[kind] = {"fps": on["fps"] / off["fps"], "p99_ms": on["p99_ms"] / off["p99_ms"]}
        for state, m in (("off", off), ("on", on)):
            ratio = ratios[kind] if state == "on" else None
            table.add_row(
                f"{kind} ({(args.video if kind == 'throughput' else args.live).name}), monitor {state}",
                f"{m['fps']:.2f}",
                f"{m['p99_ms']:.0f}",
                f"{m['dropped']:.0f}",
                f"{ratio['fps']:.3f}" if ratio else "",
                f"{ratio['p99_ms']:.3f}" if ratio else "",
            )
    out.print(table)
    write_json(
        args.json, {"machine": info, "repeats": args.repeats, "median": medians, "on_over_off": ratios, "runs": runs}
    )
    out.print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
