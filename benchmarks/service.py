"""The HTTP service against the CLI on the same images: images per second and latency.

    python benchmarks/service.py [--images N] [--workers 1 2] [--clients 1 4 16] [--json FILE]

640x480 JPEGs (WIDER FACE val photos, cropped and scaled; from ../shared/eval or $ANONSTREAM_EVAL),
every default detector. For each worker count: `anonstream run --stills` on a folder of them (its own
images per second, start-up excluded: the reference), then `anonstream serve --workers W`, loaded once,
with 1, 4 and 16 clients (threads with one keep-alive connection each) sending them all, and its images
per second from the first request to the last answer; latency per request, p50 / p95 / p99.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
from common import ANONSTREAM, EVAL, RESULTS, anonstream_run, console, describe, machine, need, write_json
from rich.table import Table

SIZE = (640, 480)


def _images(folder: Path, count: int) -> list[bytes]:
    paths = sorted(need(folder, "WIDER FACE images").rglob("*.jpg"))[:count]
    out = []
    for path in paths:
        image = cv2.imread(str(path))
        h, w = image.shape[:2]
        side = min(w, h * SIZE[0] // SIZE[1])  # the largest 4:3 crop, centred
        top, left = (h - side * SIZE[1] // SIZE[0]) // 2, (w - side) // 2
        crop = image[top : top + side * SIZE[1] // SIZE[0], left : left + side]
        out.append(cv2.imencode(".jpg", cv2.resize(crop, SIZE), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return out


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(images: list[bytes], workers: int, scratch: Path) -> float:
    folder = scratch / "photos"
    folder.mkdir(exist_ok=True)
    for i, data in enumerate(images):
        (folder / f"{i:03d}.jpg").write_bytes(data)
    args = ["--source", str(folder), "--record", str(scratch / "out"), "--stills", "--overwrite"]
    _, summary = anonstream_run([*args, "--workers", str(workers)], scratch, "the CLI")
    return float(summary["streams"][0]["fps"])


def _clients(base: str, images: list[bytes], clients: int) -> dict[str, Any]:
    latencies: list[float] = []
    refused = 0
    lock = threading.Lock()
    work = list(enumerate(images))

    def client() -> None:
        nonlocal refused
        with httpx.Client(timeout=300) as http:
            while True:
                with lock:
                    if not work:
                        return
                    _, data = work.pop()
                start = time.perf_counter()
                answer = http.post(f"{base}/v1/anonymize", content=data, headers={"Content-Type": "image/jpeg"})
                took = time.perf_counter() - start
                with lock:
                    if answer.status_code == 200:
                        latencies.append(took)
                    elif answer.status_code == 503:
                        refused += 1
                        work.append((0, data))  # tried again, as a client told Retry-After would
                    else:
                        raise SystemExit(f"the service answered {answer.status_code}: {answer.text[:300]}")
                if answer.status_code == 503:
                    time.sleep(float(answer.headers.get("retry-after", 1)))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {
        "images_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "refused_503": refused,
    }


def _service(images: list[bytes], workers: int, clients: list[int]) -> dict[int, dict[str, Any]]:
    port = _port()
    process = subprocess.Popen(
        [*ANONSTREAM, "serve", "--port", str(port), "--workers", str(workers), "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            if process.poll() is not None:
                raise SystemExit(f"anonstream serve failed: {process.communicate()[1][-2000:]}")
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        httpx.post(f"{base}/v1/anonymize", content=images[0], headers={"Content-Type": "image/jpeg"}, timeout=60)
        return {n: _clients(base, images, n) for n in clients}
    finally:
        process.terminate()
        process.wait(60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--json", type=Path, default=RESULTS / "service.json")
    args = parser.parse_args()
    info = machine()
    out = console()
    images = _images(EVAL / "wider_dev" / "images", args.images)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="anonstream-service-") as folder:
        for workers in args.workers:
            cli = _cli(images, workers, Path(folder))
            out.print(f"  CLI --stills, {workers} worker(s): {cli:.2f} images/s")
            served = _service(images, workers, args.clients)
            for n, figures in served.items():
                out.print(f"  service, {workers} worker(s), {n} client(s): {figures}")
            results[str(workers)] = {"cli_images_per_s": cli, "service": {str(n): f for n, f in served.items()}}
    table = Table(title=f"{len(images)} JPEGs of 640x480, every default detector; {describe(info)}")
    for column in ("workers", "clients", "images/s", "p50 ms", "p95 ms", "p99 ms", "503s", "of the CLI's"):
        table.add_column(column, justify="right")
    for workers, result in results.items():
        table.add_row(workers, "CLI --stills", f"{result['cli_images_per_s']:.2f}", "", "", "", "", "1.00")
        for n, f in result["service"].items():
            ratio = f["images_per_s"] / result["cli_images_per_s"]
            f["of_cli"] = ratio
            row = [f"{f['images_per_s']:.2f}", f"{f['p50_ms']:.0f}", f"{f['p95_ms']:.0f}", f"{f['p99_ms']:.0f}"]
            table.add_row(workers, n, *row, str(f["refused_503"]), f"{ratio:.2f}")
    out.print(table)
    write_json(args.json, {"machine": info, "images": len(images), "size": list(SIZE), "results": results})
    out.print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
