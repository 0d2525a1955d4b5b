"""`anonstream serve` as a process, spoken to over real HTTP with httpx, on the real models."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from anonstream.demo import ASTRONAUT_FACE, AstronautClip, astronaut_bgr
from tests.conftest import decode_video, free_port, start_cli, wait_for
from tests.test_files import clip_with_audio
from tests.test_pipeline import assert_face_masked


@dataclass
class Server:
    base: str
    tmp: Path  # the service's TMPDIR: its private folder is made in there
    process: subprocess.Popen[str]
    stderr: str = ""  # what it wrote, once it has stopped

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])

    def files_left(self) -> list[Path]:
        return _files(self.tmp)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> None:
        """Signal it and wait for it to end: its exit status and error output are then there to check."""
        self.process.send_signal(sig)
        self.stderr = self.process.communicate(timeout=timeout)[1]


def _files(folder: Path) -> list[Path]:
    """Every file in ``folder`` but ONNX Runtime's own: it leaves a session marker (.ses, a time and an id)."""
    return [p for p in folder.rglob("*") if p.is_file() and p.name != ".ses"]


@contextlib.contextmanager
def serving(tmp: Path, *args: str) -> Iterator[Server]:
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = os.environ | {"TMPDIR": str(tmp)}
    process = start_cli("serve", "--port", str(port), "--workers", "2", *args, env=env)
    base = f"http://127.0.0.1:{port}"
    server = Server(base, tmp, process)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, server.process.communicate()[1]
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.3)
        yield server
    finally:
        if process.poll() is None:
            try:
                server.stop()
            except subprocess.TimeoutExpired:
                process.kill()
                server.stderr = process.communicate()[1]
    assert process.returncode == 0, server.stderr
    assert not list(tmp.glob("anonstream-serve-*")) and not _files(tmp), "the private folder outlived the service"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("serve") / "tmp"
    with serving(tmp, "--set", "serve.max_image_mb=2", "--set", "serve.max_video_mb=5") as running:
        yield running


def jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header for an image of this size, with hardly any data: what a decompression bomb looks like."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def post_image(server: Server, body: bytes, kind: str = "image/jpeg", query: str = "") -> httpx.Response:
    return httpx.post(f"{server.base}/v1/anonymize{query}", content=body, headers={"Content-Type": kind}, timeout=120)


def test_an_image_comes_back_masked_in_its_own_format(server: Server) -> None:
    photo = astronaut_bgr()
    answer = post_image(server, jpeg(photo), query="?boxes=header")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/jpeg" and answer.content[:3] == b"\xff\xd8\xff"
    out = cv2.imdecode(np.frombuffer(answer.content, np.uint8), cv2.IMREAD_COLOR)
    assert out.shape == photo.shape
    assert_face_masked(photo, out, ASTRONAUT_FACE, "jpeg")
    boxes = json.loads(answer.headers["x-anonstream-boxes"])
    assert any(b["class"] == "face" for b in boxes)

    png = cv2.imencode(".png", photo)[1].tobytes()
    answer = post_image(server, png, "image/png", "?boxes=json&mask=solid&detect=faces")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["media_type"] == "image/png" and {b["class"] for b in body["boxes"]} == {"face"}
    import base64

    out = cv2.imdecode(np.frombuffer(base64.b64decode(body["image"]), np.uint8), cv2.IMREAD_COLOR)
    x1, y1, x2, y2 = ASTRONAUT_FACE
    assert out[y1 + 30 : y2 - 30, x1 + 20 : x2 - 20].max() == 0  # solid black, as asked

    webp = cv2.imencode(".webp", photo, [cv2.IMWRITE_WEBP_QUALITY, 95])[1].tobytes()
    answer = post_image(server, webp, "image/webp", "?detect=faces")
    assert answer.status_code == 200 and answer.content[8:12] == b"WEBP"


BAD_INPUTS = [
    ("not an image", b"hello, this is text", "image/jpeg", "", 400, "not an image"),
    ("zero bytes", b"", "image/jpeg", "", 400, "empty"),
    ("a truncated JPEG", "truncated", "image/jpeg", "", 400, "truncated"),
    ("a decompression bomb", png_claiming(30000, 30000), "image/png", "", 413, "pixels"),
    ("more pixels than serve.max_pixels", png_claiming(10000, 6000), "image/png", "", 413, "serve.max_pixels"),
    ("the wrong content type", "photo", "text/plain", "", 415, "Content-Type"),
    ("bytes that are not what the content type says", "photo", "image/png", "", 415, "image/jpeg"),
    ("an unknown option", "photo", "image/jpeg", "?sparkles=1", 400, "sparkles"),
    ("a bad option value", "photo", "image/jpeg", "?mask=glitter", 400, "mask"),
    ("a detector not loaded", "photo", "image/jpeg", "?detect=hands", 400, "hands"),
    ("an upload over the limit", "big", "image/jpeg", "", 413, "serve.max_image_mb"),
]


@pytest.mark.parametrize(
    ("case", "body", "kind", "query", "status", "says"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_gets_a_4xx_that_says_why_and_the_next_request_still_works(
    server: Server, case: str, body: bytes | str, kind: str, query: str, status: int, says: str
) -> None:
    photo = jpeg(astronaut_bgr())
    data = {"truncated": photo[: len(photo) // 2], "photo": photo, "big": os.urandom(3_000_000)}.get(body, body)
    assert isinstance(data, bytes)
    answer = post_image(server, data, kind, query)
    assert answer.status_code == status, (case, answer.text)
    assert says.lower() in answer.json()["error"].lower(), answer.json()
    assert "\\x" not in answer.text and len(answer.content) < 1000  # no pixels echoed back
    assert post_image(server, photo, query="?detect=faces").status_code == 200


def test_a_video_job_runs_to_a_file_with_its_audio_fetched_once(server: Server, tmp_path: Path) -> None:
    clip = AstronautClip(width=320, height=240, frames=30, fps=30)
    source = clip_with_audio(tmp_path / "talk.mp4", clip, video_delay_s=0.0)
    started = httpx.post(
        f"{server.base}/v1/videos", content=source.read_bytes(), headers={"Content-Type": "video/mp4"}, timeout=60
    )
    assert started.status_code == 202, started.text
    job = started.json()
    assert started.headers["location"] == f"/v1/videos/{job['id']}"
    seen = []
    deadline = time.monotonic() + 180
    while job["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
        job = httpx.get(f"{server.base}/v1/videos/{job['id']}").json()
        seen.append(job["progress"])
    assert job["state"] == "done", job
    assert job["frames"] == clip.frames and job["progress"] == 1.0 and job["masks"]["face"] >= clip.frames
    assert not [p for p in server.files_left() if p.name.startswith("upload")]  # the raw upload is gone
    fetched = httpx.get(f"{server.base}{job['download']}", timeout=60)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "video/mp4"
    out = tmp_path / "anonymized.mp4"
    out.write_bytes(fetched.content)
    decoded, _ = decode_video(out)
    raw, _ = decode_video(source)
    assert len(decoded) == clip.frames
    for i in (0, clip.frames - 1):
        assert_face_masked(raw[i], decoded[i], clip.face_box(i), f"frame {i}")
    with av.open(str(out)) as container:
        assert [s.codec_context.name for s in container.streams.audio] == ["aac"]
    assert httpx.get(f"{server.base}{job['download']}").status_code == 404  # deleted after the download
    wait_for(lambda: server.files_left() == [], "the job's folder removed once its file was sent")


@pytest.mark.parametrize(
    ("body", "kind", "status", "says"),
    [
        ("photo", "video/mp4", 415, "image"),
        (b"not a video at all", "video/mp4", 415, "not a video"),
        ("clip", "image/jpeg", 415, "video"),
        (b"", "video/mp4", 400, "empty"),
        ("big", "video/mp4", 413, "serve.max_video_mb"),
    ],
)
def test_bad_video_uploads_are_refused_and_leave_nothing(
    server: Server, tmp_path: Path, body: bytes | str, kind: str, status: int, says: str
) -> None:
    clip = AstronautClip(width=160, height=120, frames=3).write(tmp_path / "c.mp4").read_bytes()
    data = {"photo": jpeg(astronaut_bgr()), "clip": clip, "big": os.urandom(6_000_000)}.get(body, body)
    assert isinstance(data, bytes)
    answer = httpx.post(f"{server.base}/v1/videos", content=data, headers={"Content-Type": kind}, timeout=60)
    assert answer.status_code == status, answer.text
    assert says in answer.json()["error"]
    assert server.files_left() == []
    assert httpx.get(f"{server.base}/v1/videos/0123456789abcdef").status_code == 404


def test_200_requests_from_8_clients_are_all_answered_and_leave_nothing_on_disk(server: Server) -> None:
    clip = AstronautClip(width=320, height=240, frames=8)
    photo = astronaut_bgr()
    images = [jpeg(clip.frame(i, photo)) for i in range(clip.frames)]

    def client(number: int) -> list[tuple[int, str | None]]:
        answers = []
        with httpx.Client(timeout=120) as http:
            for i in range(25):
                answer = http.post(
                    f"{server.base}/v1/anonymize?detect=faces",
                    content=images[(number + i) % len(images)],
                    headers={"Content-Type": "image/jpeg"},
                )
                if answer.status_code == 200:
                    assert answer.content[:3] == b"\xff\xd8\xff"
                answers.append((answer.status_code, answer.headers.get("retry-after")))
        return answers

    with ThreadPoolExecutor(8) as pool:
        answers = [a for part in pool.map(client, range(8)) for a in part]
    assert len(answers) == 200
    assert {status for status, _ in answers} <= {200, 503}
    assert all(retry is not None for status, retry in answers if status == 503)
    assert sum(status == 200 for status, _ in answers) >= 100
    metrics = httpx.get(f"{server.base}/metrics").text
    assert 'anonstream_worker_info{device="CPU",worker="2"} 1.0' in metrics
    assert server.files_left() == []


def test_a_service_over_its_queue_answers_503_with_retry_after(tmp_path: Path) -> None:
    photo = jpeg(cv2.resize(astronaut_bgr(), (1024, 1024)))
    args = ("--set", "serve.queue=0", "--set", "worker.count=1")
    with serving(tmp_path / "tmp", *args) as small, ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: post_image(small, photo), range(6)))
    codes = sorted(a.status_code for a in answers)
    assert 200 in codes and 503 in codes, codes
    assert all(a.headers["retry-after"] == "1" for a in answers if a.status_code == 503)


def test_a_token_is_required_where_one_is_set_and_the_openapi_description_is_served(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token-of-enough-length\n")
    photo = jpeg(astronaut_bgr())
    with serving(tmp_path / "tmp", "--token-file", str(token)) as guarded:
        assert post_image(guarded, photo).status_code == 401
        headers = {"Content-Type": "image/jpeg", "Authorization": "Bearer s3cret-token-of-enough-length"}
        answer = httpx.post(f"{guarded.base}/v1/anonymize?detect=faces", content=photo, headers=headers, timeout=60)
        assert answer.status_code == 200
        assert httpx.get(f"{guarded.base}/healthz").status_code == 200  # probes need no token
        paths = httpx.get(f"{guarded.base}/openapi.json").json()["paths"]
        assert {"/v1/anonymize", "/v1/videos", "/v1/videos/{job_id}", "/v1/videos/{job_id}/file"} <= set(paths)


def _upload(port: int, path: str, kind: str, length: int, first: bytes) -> socket.socket:
    """A POST whose headers announce ``length`` bytes of body, of which only ``first`` is sent (so far)."""
    connection = socket.create_connection(("127.0.0.1", port))
    head = f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {kind}\r\nContent-Length: {length}\r\n\r\n"
    connection.sendall(head.encode() + first)
    return connection


def _trickle(port: int, path: str, kind: str, body: bytes, seconds: float) -> str:
    """An upload that sends a byte every 0.1 s for ``seconds``, then stalls: the whole answer it gets.

    (It stops sending well before the server's limit: bytes arriving after the server has answered and
    closed would make it reset the connection, and the answer could be lost on the way.)
    """
    with _upload(port, path, kind, len(body), body[:100]) as connection:
        for byte in body[100 : 100 + round(seconds * 10)]:
            if select.select([connection], [], [], 0.1)[0]:
                break
            connection.sendall(bytes([byte]))
        connection.settimeout(60)
        answer = b""
        while chunk := connection.recv(4096):  # the server closes the connection after its answer
            answer += chunk
        return answer.decode(errors="replace")


def _status_count(server: Server, status: str) -> float:
    """Requests answered with ``status``, all routes together, from /metrics."""
    text = httpx.get(f"{server.base}/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "anonstream_http_requests_total" and sample.labels["status"] == status
    )


def test_aborted_and_trickling_uploads_cost_only_themselves(tmp_path: Path) -> None:
    """32 uploads cut off mid-body and 8 that trickle: each releases what it held; then the service answers as ever.

    Its error output is a pipe that nobody reads while it runs, as a service's often is: a traceback per aborted
    upload used to fill it, and the next log line then blocked the service for good.
    """
    photo = jpeg(astronaut_bgr())
    video = AstronautClip(width=320, height=240, frames=30).write(tmp_path / "clip.mp4").read_bytes()
    uploads = [("/v1/anonymize", "image/jpeg", photo), ("/v1/videos", "video/mp4", video)]
    with serving(tmp_path / "tmp", "--set", "serve.upload_timeout_s=3") as server:
        for _ in range(16):
            for path, kind, body in uploads:
                _upload(server.port, path, kind, len(body), body[:1000]).close()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda n: _trickle(server.port, *uploads[n % 2], seconds=1), range(8)))
        for answer in answers:
            assert answer.startswith("HTTP/1.1 408"), answer
            assert "connection: close" in answer.lower() and "serve.upload_timeout_s" in answer
        wait_for(lambda: _status_count(server, "499") == 32, "every aborted upload counted")
        assert _status_count(server, "408") == 8
        assert httpx.get(f"{server.base}/healthz").json()["requests_inside"] == 0  # every admission slot is back
        for _ in range(4):
            assert post_image(server, photo).status_code == 200
        assert server.files_left() == []  # no upload left behind
    assert "Traceback" not in server.stderr and "Exception in ASGI" not in server.stderr, server.stderr[-3000:]


def test_sigterm_ends_the_service_within_seconds_whatever_is_in_flight(tmp_path: Path) -> None:
    """A video job running, an upload stalled mid-body, an image in work: SIGTERM (systemctl stop) ends it all."""
    long_video = AstronautClip(width=640, height=360, frames=900).write(tmp_path / "long.mp4").read_bytes()
    photo = jpeg(cv2.resize(astronaut_bgr(), (1600, 1600)))
    with serving(tmp_path / "tmp") as server, ThreadPoolExecutor(2) as pool:
        job = httpx.post(
            f"{server.base}/v1/videos", content=long_video, headers={"Content-Type": "video/mp4"}, timeout=60
        ).json()
        wait_for(lambda: httpx.get(f"{server.base}/v1/videos/{job['id']}").json()["frames"] > 0, "the job under way")
        stalled = _upload(server.port, "/v1/anonymize", "image/jpeg", len(photo), photo[:1000])
        in_work = pool.submit(post_image, server, photo)
        wait_for(lambda: httpx.get(f"{server.base}/healthz").json()["requests_inside"] == 2, "both requests inside")
        server.stop(signal.SIGTERM, timeout=30)  # not the minutes the video would take, nor forever for the upload
        stalled.close()
        with contextlib.suppress(httpx.HTTPError):
            in_work.result()
    assert "Traceback" not in server.stderr, server.stderr[-3000:]
