"""The ``anonstream`` command: ``run`` composes every role on one host; each role also runs alone."""

from __future__ import annotations

import argparse
import contextlib
import logging
import logging.handlers
import multiprocessing
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from setproctitle import setproctitle

from anonstream import __version__
from anonstream.config import (
    PRESETS,
    MetricsConfig,
    ServeConfig,
    Settings,
    default_config_text,
    load_settings,
    nested,
    parse_assignment,
)
from anonstream.errors import AnonstreamError, ConfigError, RecorderError
from anonstream.installation import check_installation
from anonstream.process import Channel, Failed, Finished, Redacting, Stage, name_process, run_stage
from anonstream.redaction import redact
from anonstream.stream.wire import MAX_WORKERS
from anonstream.systemd import Notifier

if TYPE_CHECKING:
    from anonstream.monitor import Monitor, MonitorServer
    from anonstream.orchestrator import PipelineResult
    from anonstream.stream.metrics import RunSummary

log = logging.getLogger("anonstream")

EXAMPLES = """\
examples:
  anonstream run street.mp4 -o street_anonymized.mp4                      # one file in, one file out (audio kept)
  anonstream run photo.jpg -o photo_anonymized.jpg
  anonstream run *.mp4 --record out/                                       # each file its own stream: out/<name>.mp4
  anonstream run --source photos/ --record out/ --mask solid --stills
  anonstream run --source webcam.mp4 --record out/ --detect faces          # faster: no plates
  anonstream run --source rtsp://cam.local/1 --source 0 --record out/ --device cuda --workers 4
  anonstream models                                                        # every model, its file and licence
  anonstream demo
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _config_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("configuration (each flag overrides the config key named)")
    g.add_argument("--config", type=Path, metavar="FILE", help="TOML config file (see `anonstream config`)")
    g.add_argument(
        "--preset",
        choices=PRESETS,
        help="preset: fast (stills tiled at their own resolution, not 2x), balanced (default), max-privacy "
        "(tiles on video too, lower threshold, longer hold); "
        "config/presets/ lists the keys each one sets, and any key set explicitly wins",
    )
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any config key, e.g. --set sequencer.loss_timeout_s=10 (repeatable)",
    )
    g.add_argument("-v", "--verbose", action="store_true", help="debug log output")
    g.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bar")


def _detector_names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("names no detector: give one or more, e.g. --detect faces,plates")
    return names


def _worker_number(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a worker number from 1 to {MAX_WORKERS}")
    return int(text)


def _detector_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("detection and masking")
    g.add_argument(
        "--detect",
        type=_detector_names,
        metavar="NAMES",
        help="detect: the detectors to run, comma-separated (default faces,plates; --detect faces is faster); "
        "each is a [detectors.NAME] section (see `anonstream config`, `anonstream models`)",
    )
    g.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda", "tensorrt"],
        help="runtime.device (default auto: the GPU if a session really runs there, else the CPU)",
    )
    g.add_argument(
        "--model", type=Path, metavar="FILE", help="detectors.faces.model: a CenterFace-compatible ONNX file"
    )
    g.add_argument(
        "--threshold",
        type=float,
        metavar="T",
        help="detectors.faces.threshold: minimum score of a small face (default 0.11); larger faces need more, "
        "up to detectors.faces.large_threshold (0.4)",
    )
    g.add_argument(
        "--max-side",
        type=int,
        metavar="PX",
        help="detectors.faces.stills.max_side and .video.max_side: the face detector's input, longest side, "
        "a multiple of 32; 0 = native",
    )
    g.add_argument("--mask", choices=["blur", "pixelate", "solid"], help="mask.mode (default blur), every class")
    g.add_argument("--mask-shape", choices=["box", "ellipse"], help="mask.shape (default box), every class")
    g.add_argument(
        "--mask-scale",
        type=float,
        metavar="F",
        help="detectors.faces.mask_scale: grow face boxes by F around their centre (default 1.3)",
    )


STILLS_HELP = (
    "capture.stills: each image stands alone (photos, not a sequence): all of it is scanned in "
    "high-resolution tiles, and no tracker state carries from one image to the next (a single image "
    "source always is one)"
)

# flag (argparse dest) -> the config keys it sets
FLAG_KEYS: dict[str, tuple[str, ...]] = {
    "workers": ("worker.count",),
    "detect": ("detect",),
    "device": ("runtime.device",),
    "model": ("detectors.faces.model",),
    "threshold": ("detectors.faces.threshold",),
    "max_side": ("detectors.faces.stills.max_side", "detectors.faces.video.max_side"),
    "mask": ("mask.mode",),
    "mask_shape": ("mask.shape",),
    "mask_scale": ("detectors.faces.mask_scale",),
    "record": ("record.dir",),
    "output_file": ("record.output",),
    "overwrite": ("record.overwrite",),
    "append": ("record.append",),
    "segment": ("record.segment_s",),
    "audio": ("record.audio",),
    "record_format": ("record.format",),
    "metrics_jsonl": ("metrics.jsonl",),
    "realtime": ("capture.realtime",),
    "stills": ("capture.stills",),
    "summary_json": ("metrics.summary_json",),
    "status_interval": ("metrics.status_interval_s",),
    "metrics_port": ("metrics.port",),
    "metrics_bind": ("metrics.bind",),
    "port": ("serve.port",),
    "secret_key": ("security.secret_key",),
    "allow": ("security.allow",),
    "insecure_plaintext": ("security.insecure_plaintext",),
    "token_file": ("serve.token_file",),
}


def _keep_flags(parser: argparse.ArgumentParser) -> None:
    """How recordings of a run that goes on for days, or restarts, are kept."""
    parser.add_argument(
        "--append",
        action="store_true",
        default=None,
        help="record.append: keep a video output that exists and record on into the next numbered file "
        "(DIR/<stream>-1.mp4...), so that a restarted service loses nothing",
    )
    parser.add_argument(
        "--segment",
        type=float,
        metavar="S",
        help="record.segment_s: start a new numbered video file every S seconds of a stream (default: one file)",
    )


def _security_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("security (TCP links between hosts: CurveZMQ keys, see `anonstream keys`)")
    g.add_argument("--secret-key", type=Path, metavar="FILE", help="security.secret_key: this role's secret key file")
    g.add_argument(
        "--allow", type=Path, metavar="DIR", help="security.allow: the public keys (*.key) let in to what it binds"
    )
    g.add_argument(
        "--server-key",
        action="append",
        metavar="ENDPOINT=FILE",
        help="security.servers: the public key of the role listening at ENDPOINT (repeatable)",
    )
    g.add_argument(
        "--insecure-plaintext",
        action="store_true",
        default=None,
        help="security.insecure_plaintext: allow TCP links without keys; frames cross the network "
        "unencrypted and anyone who reaches a port can send or take them (a trusted lab network only)",
    )


def _monitor_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("live figures (an HTTP port: /metrics for Prometheus, /healthz, / a preview page)")
    g.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="metrics.port: serve /metrics, /healthz and the preview page on this port while it runs",
    )
    g.add_argument(
        "--metrics-bind",
        metavar="ADDRESS",
        help=f"metrics.bind: the address to listen on (default {MetricsConfig().bind}, this host only; "
        "0.0.0.0 shows every camera's anonymized picture to whoever reaches the port)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="anonstream",
        description="Real-time anonymizer for live camera feeds: faces and licence plates. Raw "
        "frames never reach a recorder: every frame is detected and masked, or masked whole.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"anonstream {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser(
        "run",
        help="anonymize sources into recordings, all stages on this machine",
        description="Start capture, detection workers, sequencer and recorders on this "
        "machine, anonymize every source into -o FILE (one source) or --record DIR, print per-stream "
        "metrics. Files and folders lose no frame (exit 1, naming any that a dead worker took with it); "
        "live sources drop frames rather than fall behind, and say so.",
    )
    run.add_argument(
        "inputs",
        nargs="*",
        metavar="SOURCE",
        help="sources, as with --source: each file (shell globs work), folder, webcam or URL its own stream",
    )
    run.add_argument(
        "--source",
        action="append",
        metavar="SRC",
        help="video file, image, image folder, webcam (0, /dev/video0) or rtsp:// URL; repeat for more streams "
        "(sources)",
    )
    run.add_argument(
        "-o",
        "--output",
        dest="output_file",
        type=Path,
        metavar="FILE",
        help="record.output: the output file of a single source: a video as .mp4 (or .mov, .m4v, .mkv), an "
        "image in its own format (photo.jpg -o photo_anonymized.jpg)",
    )
    run.add_argument(
        "--record",
        type=Path,
        metavar="DIR",
        help="record.dir: output folder, for any number of sources: a video becomes DIR/<stream>.mp4, an image "
        "DIR/<its name>, a folder DIR/<stream>/<the same names>; a name such as out.mp4 is refused (use -o)",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        default=None,
        help="record.overwrite: replace output files that exist (otherwise the run refuses to start)",
    )
    _keep_flags(run)
    run.add_argument(
        "--no-audio",
        dest="audio",
        action="store_false",
        default=None,
        help="record.audio = false: leave a video file's audio out (by default it is copied, in sync; live "
        "sources (RTSP, webcams) are recorded without audio)",
    )
    run.add_argument(
        "--record-format",
        choices=["auto", "mp4", "images", "null"],
        help="record.format (null: discard output, for benchmarks)",
    )
    run.add_argument("--workers", type=int, metavar="N", help="worker.count: detection processes (default 2)")
    run.add_argument(
        "--realtime",
        action="store_true",
        default=None,
        help="capture.realtime: pace files at their frame rate, as a live camera; workers that fall "
        "behind drop the oldest frames (counted) instead of queueing them",
    )
    run.add_argument(
        "--metrics-jsonl",
        type=Path,
        metavar="FILE",
        help="metrics.jsonl: write one JSON record per frame with every stage's timestamp",
    )
    run.add_argument(
        "--summary-json",
        type=Path,
        metavar="FILE",
        help="metrics.summary_json: write the per-stream counts and latency percentiles printed at the end",
    )
    run.add_argument(
        "--status-interval",
        type=float,
        metavar="S",
        help="metrics.status_interval_s: when stderr is not a terminal (systemd, CI, | tee), log a status line "
        f"per stream every S seconds: frames, fps, drops, p99 latency (default {MetricsConfig().status_interval_s:g}; "
        "0: never); a terminal shows "
        "a progress display instead",
    )
    run.add_argument("--stills", action="store_true", default=None, help=STILLS_HELP)
    _monitor_flags(run)
    _detector_flags(run)
    _config_flags(run)

    capture = sub.add_parser(
        "capture",
        help="run one capture process: read a source, publish frames",
        description="Read one source and publish its frames on a ZeroMQ endpoint for "
        "`anonstream worker` processes to pull.",
    )
    capture.add_argument("--source", action="append", metavar="SRC", help="the source (sources)")
    capture.add_argument("--bind", metavar="ENDPOINT", help="capture.bind, e.g. tcp://*:5555")
    capture.add_argument("--realtime", action="store_true", default=None, help="capture.realtime")
    capture.add_argument("--stills", action="store_true", default=None, help=STILLS_HELP)
    _security_flags(capture)
    _config_flags(capture)

    worker = sub.add_parser(
        "worker",
        help="run one detection worker between captures and a recorder",
        description="Pull raw frames from capture endpoints, mask every face, push "
        "anonymized frames to the record endpoint.",
    )
    worker.add_argument(
        "--input",
        action="append",
        metavar="ENDPOINT",
        help="worker.inputs: a capture endpoint, e.g. tcp://camhost:5555 (repeatable)",
    )
    worker.add_argument("--output", metavar="ENDPOINT", help="worker.output, e.g. tcp://recorder:5600")
    worker.add_argument(
        "--number",
        type=_worker_number,
        default=1,
        metavar="N",
        help=f"this worker's number, 1-{MAX_WORKERS}, unique among the workers of one record process: its "
        "process title, and its idle notices",
    )
    _monitor_flags(worker)
    _detector_flags(worker)
    _security_flags(worker)
    _config_flags(worker)

    record = sub.add_parser(
        "record",
        help="run the sequencer and recorders",
        description="Receive anonymized frames from workers, restore each stream's "
        "order and record it. Stops on Ctrl-C, or when every --expect stream has ended.",
    )
    record.add_argument("--bind", metavar="ENDPOINT", help="record.bind, e.g. tcp://*:5600")
    record.add_argument("--record", type=Path, metavar="DIR", help="record.dir: output folder")
    record.add_argument("--record-format", choices=["auto", "mp4", "images", "null"], help="record.format")
    record.add_argument("--overwrite", action="store_true", default=None, help="record.overwrite")
    _keep_flags(record)
    record.add_argument(
        "--expect", action="append", default=[], metavar="STREAM", help="exit once this stream has ended (repeatable)"
    )
    record.add_argument("--metrics-jsonl", type=Path, metavar="FILE", help="metrics.jsonl")
    record.add_argument("--status-interval", type=float, metavar="S", help="metrics.status_interval_s")
    _monitor_flags(record)
    _security_flags(record)
    _config_flags(record)

    demo = sub.add_parser(
        "demo",
        help="anonymize a bundled example clip of a real face and a licence plate",
        description="Make a short clip of scikit-image's astronaut photo moving across "
        "the frame and a rendered licence plate driving below it, anonymize it, and say where "
        "input and output are.",
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("anonstream-demo"),
        metavar="DIR",
        help="folder for the example and its anonymized copy (default ./anonstream-demo)",
    )
    _detector_flags(demo)
    _config_flags(demo)

    sub.add_parser("config", help="print the documented default configuration file")

    keys = sub.add_parser(
        "keys",
        help="make a CurveZMQ keypair for a role on its own host",
        description="Write NAME.key (public: copy it to the hosts this one talks to: into their security.allow "
        "folder, or as their security.servers entry for this host's endpoint) and NAME.key_secret (secret, "
        "mode 600: it stays on this host, as this role's security.secret_key).",
    )
    keys.add_argument("name", metavar="NAME", help="the role or host the pair is for, e.g. capture-front, worker-1")
    keys.add_argument("--dir", type=Path, default=Path("."), metavar="DIR", help="where to write them (default .)")
    _config_flags(keys)

    serve = sub.add_parser(
        "serve",
        help="an HTTP service: images and videos in, anonymized out (for other software)",
        description="Serve POST /v1/anonymize (a JPEG, PNG or WebP image in, the same anonymized out) and "
        "POST /v1/videos (a video job: poll GET /v1/videos/ID, fetch GET /v1/videos/ID/file once), with "
        "/healthz, /metrics and the OpenAPI description at /docs, on a pool of --workers detector sets. "
        "Uploads are kept in a private temporary folder only while their request or job needs them.",
    )
    serve.add_argument("--bind", metavar="ADDRESS", help=f"serve.bind (default {ServeConfig().bind}: this host only)")
    serve.add_argument("--port", type=int, metavar="PORT", help=f"serve.port (default {ServeConfig().port})")
    serve.add_argument(
        "--workers", type=int, metavar="N", help="worker.count: detector sets, each on its share of the cores"
    )
    serve.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="serve.token_file: require 'Authorization: Bearer TOKEN' on /v1/, TOKEN read from FILE",
    )
    _detector_flags(serve)
    _config_flags(serve)

    models = sub.add_parser(
        "models",
        help="list every model anonstream can use: file, sha256, package, licence",
        description="List every model the configured detectors use (active or not): the detector and the "
        "classes it finds, the file and its sha256, the package and version it comes from, its licence and "
        "where that licence is stated, and what it looks at. Nothing is downloaded, ever.",
    )
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _config_flags(models)
    return parser


def _overrides(args: argparse.Namespace) -> list[dict[str, Any]]:
    overrides: list[dict[str, Any]] = []
    for dest, keys in FLAG_KEYS.items():
        value = getattr(args, dest, None)
        if value is not None:
            overrides += [nested(key, str(value) if isinstance(value, Path) else value) for key in keys]
    if getattr(args, "preset", None):
        overrides.append({"preset": args.preset})
    uris = [*(getattr(args, "inputs", None) or []), *(getattr(args, "source", None) or [])]
    if uris:
        overrides.append({"sources": [{"uri": uri} for uri in uris]})
    if getattr(args, "bind", None):
        section = args.command if args.command in ("capture", "serve") else "record"
        overrides.append({section: {"bind": args.bind}})
    for assignment in getattr(args, "server_key", None) or []:
        endpoint, _, key = assignment.rpartition("=")
        if not endpoint or not key:
            raise ConfigError(f"--server-key {assignment}: give ENDPOINT=FILE, e.g. tcp://camhost:5555=capture.key")
        overrides.append({"security": {"servers": {endpoint: key}}})
    if getattr(args, "input", None):
        overrides.append({"worker": {"inputs": args.input}})
    if getattr(args, "output", None):
        overrides.append({"worker": {"output": args.output}})
    overrides += [parse_assignment(text) for text in args.set]
    return overrides


def _console_logging(console: Console, args: argparse.Namespace) -> int:
    """Rich log lines on a terminal, plain timestamped lines otherwise (files, CI)."""
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    handler: logging.Handler
    if console.is_terminal:
        handler = RichHandler(console=console, show_path=False, markup=False, log_time_format="[%X]")
        handler.setFormatter(logging.Formatter("%(processName)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(processName)s: %(message)s"))
    handler.addFilter(Redacting())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    return level


def _stdout_console() -> Console:
    """Where the final tables go; wide enough not to cut stream names when piped to a file."""
    console = Console()
    return console if console.is_terminal else Console(width=140)


def _on_stop_signals(callback: Any) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: callback())


def _preflight(settings: Settings) -> None:
    """Catch what a user can get wrong before any process starts."""
    from anonstream.stream.recorders import ensure_output_dir, existing_outputs, plan_outputs
    from anonstream.stream.sources import classify, open_source, stream_ids
    from anonstream.workers.models import model_path

    record = settings.record
    if not settings.sources:
        raise ConfigError("no source given: name a video, image, folder, webcam or URL (see --help)")
    ids = stream_ids(settings.sources)
    for spec, sid in zip(settings.sources, ids, strict=True):
        if classify(spec.uri) != "network":  # a camera that is not up yet may come: network streams are retried
            open_source(spec, sid, settings.capture).close()
    if record.dir is None and record.output is None and record.format != "null":
        raise ConfigError(
            "no output given: add -o FILE (one source) or --record DIR (or --record-format null to discard)"
        )
    outputs = plan_outputs(settings.sources, record)
    for folder in (record.dir, record.output.parent if record.output else None):
        if folder is not None:
            ensure_output_dir(folder)
    if not record.overwrite and (
        existing := existing_outputs(settings.sources, outputs, settings.capture, record.append)
    ):
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise ConfigError(
            f"{existing[0]}{more} already exist(s): add --overwrite to replace, --append to keep videos and "
            "record into new files, or write elsewhere"
        )
    for name, detector in settings.active_detectors.items():
        model = model_path(detector)
        if model is not None and not model.is_file():
            raise ConfigError(f"detectors.{name}.model: the file {model} does not exist")
    for flag, target in (
        ("--metrics-jsonl", settings.metrics.jsonl),
        ("--summary-json", settings.metrics.summary_json),
    ):
        if target is not None and (target.is_dir() or not target.parent.is_dir()):
            raise ConfigError(f"{flag} {target}: give a file name in an existing folder")


class _Rate(ProgressColumn):
    """Frames per second over the last half minute."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.1f} fps" if task.speed is not None else "", style="progress.data.speed")


def _progress(console: Console, disable: bool) -> Progress:
    """Per stream and for the whole run: frames done (recorded, dropped or lost), rate, elapsed and remaining time."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=disable,
        speed_estimate_period=30,
    )


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM take effect once the block is done: an import they interrupt halfway (onnxruntime
    turns the interruption into an ImportError) would end with a traceback instead of exit status 130."""
    requested: list[int] = []
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda sig, _: requested.append(sig)) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if requested:
        raise KeyboardInterrupt


def _run_pipeline(settings: Settings, console: Console, level: int, quiet: bool) -> int:
    with _signals_held():
        from anonstream.monitor import Monitor
        from anonstream.orchestrator import Pipeline
    from anonstream.stream.sources import lossless, stream_ids

    _preflight(settings)
    all_lossless = all(lossless(s.uri, settings.capture) for s in settings.sources)
    display = console.is_terminal and not quiet
    if display:  # the progress display shows what the status lines would
        settings = settings.model_copy(update={"metrics": settings.metrics.model_copy(update={"status_interval_s": 0})})
    ctx = multiprocessing.get_context("spawn")
    log_queue: Any = ctx.Queue()
    listener = logging.handlers.QueueListener(log_queue, *logging.getLogger().handlers, respect_handler_level=True)
    monitor = Monitor(settings)
    notifier = Notifier()
    with _monitor_server(monitor, settings) as server:
        listener.start()
        pipeline = Pipeline(settings, log_queue, level, monitor)
        stop_requested = threading.Event()  # Ctrl-C or SIGTERM at any point: no lingering after it

        def request_stop() -> None:
            stop_requested.set()
            pipeline.request_stop()

        _on_stop_signals(request_stop)
        ids = stream_ids(settings.sources)
        try:
            with _progress(console, disable=not display) as bar:
                tasks = [bar.add_task(sid, total=None) for sid in ids]
                whole = bar.add_task("all", total=None, visible=len(ids) > 1)

                def show(counts: list[int], totals: list[int | None]) -> None:
                    for task, count, total in zip(tasks, counts, totals, strict=True):
                        bar.update(task, completed=count, total=total)
                    known = None if None in totals else sum(t or 0 for t in totals)
                    bar.update(whole, completed=sum(counts), total=known)
                    notifier.running(time.monotonic(), monitor.health().stages_ok)

                result = pipeline.run(show)
        finally:
            notifier.stopping()
            listener.stop()
        monitor.finished(result.summary)
        code = _report(settings, result, console, all_lossless)
        # Linger is for a run whose sources ended by themselves: a stop request (Ctrl-C, `systemctl stop`) means now.
        if server is not None and settings.metrics.linger_s > 0 and not stop_requested.is_set():
            log.info("serving the final figures for %g s more (Ctrl-C to stop now)", settings.metrics.linger_s)
            stop_requested.wait(settings.metrics.linger_s)
    return code


@contextlib.contextmanager
def _monitor_server(monitor: Monitor, settings: Settings) -> Iterator[MonitorServer | None]:
    """The live endpoints while the block runs, where metrics.port asks for them."""
    from anonstream.monitor import MonitorServer

    cfg = settings.metrics
    if cfg.port is None:
        yield None
        return
    with MonitorServer(monitor, cfg.bind, cfg.port) as server:
        log.info("live figures: %smetrics, health: %shealthz, preview page: %s", server.url, server.url, server.url)
        yield server


def _report(settings: Settings, result: PipelineResult, console: Console, all_lossless: bool) -> int:
    """The summary tables, --summary-json and what went wrong; the exit status."""
    from anonstream.report import render

    out = _stdout_console()
    never = _never_connected(settings, result.summary)
    render(out, result.summary, result.reports, result.worker_restarts, frozenset(never))
    if result.summary is not None and settings.metrics.summary_json is not None:
        result.summary.write_json(settings.metrics.summary_json, result.workers, result.worker_counts)
    if all_lossless:
        out.print(
            "Files are read as fast as the workers take them, so queue time above is back-pressure, not "
            "live latency; --realtime paces them like a camera.",
            style="dim",
        )
    incomplete = _incomplete_files(settings, result.summary) if result.summary is not None else []
    lines = incomplete + [f"{sid}: never connected to {uri}" for sid, uri in never.items()]
    lines += [f"{failure.title}: {failure.message}" for failure in result.failures]  # last: why it stopped
    for line in lines:
        console.print(line, style="red", markup=False, highlight=False, soft_wrap=True)
    if result.interrupted:
        log.info("stopped on request; what was recorded until then is complete and playable")
    if result.summary is None:
        return 1
    refused = any(s.refused for s in result.summary.streams)
    return 1 if refused or result.failures or incomplete or never else 0


def _never_connected(settings: Settings, summary: RunSummary | None) -> dict[str, str]:
    """Network streams that delivered no frame in the whole run, by id, with their (redacted) URL."""
    from anonstream.stream.sources import classify, stream_ids

    seen = {s.stream: s.frames_in for s in summary.streams} if summary is not None else {}
    return {
        sid: redact(spec.uri)
        for spec, sid in zip(settings.sources, stream_ids(settings.sources), strict=True)
        if classify(spec.uri) == "network" and not seen.get(sid)
    }


def _incomplete_files(settings: Settings, summary: RunSummary) -> list[str]:
    """One line per file or folder that lost frames (a worker died holding them), naming what is missing."""
    from anonstream.report import lost_frames
    from anonstream.stream.sources import FolderSource, classify, lossless, stream_ids

    lines = []
    by_stream = {s.stream: s for s in summary.streams}
    for spec, sid in zip(settings.sources, stream_ids(settings.sources), strict=True):
        stream = by_stream.get(sid)
        if stream is None or not stream.lost or not lossless(spec.uri, settings.capture):
            continue
        names = None
        if classify(spec.uri) == "folder" and not stream.skipped:  # then frame k is the folder's k-th image
            with FolderSource(sid, spec.uri, settings.capture) as folder:
                names = folder.names
        missing = lost_frames(stream, names)
        lines.append(f"{sid}: {stream.lost} frame(s) lost (sent, never recorded; see the log): {missing}")
    return lines


def _run_role(stage: Stage, settings: Settings) -> int:
    name_process(stage.title)
    stop = threading.Event()
    _on_stop_signals(stop.set)
    from anonstream.monitor import Monitor

    monitor = Monitor(settings)
    monitor.stage_started(stage.title)
    channel = Channel(stage.title, sink=monitor.accept)
    with _monitor_server(monitor, settings):
        code = run_stage(stage, stop, channel)
    for event in channel.events:
        if isinstance(event, Failed):
            raise AnonstreamError(event.message)
        if isinstance(event, Finished) and event.summary is not None:
            from anonstream.report import render

            render(_stdout_console(), event.summary, [event])
            if any(s.refused for s in event.summary.streams):
                return 1
    return code


def _demo(args: argparse.Namespace, overrides: list[dict[str, Any]], console: Console, level: int) -> int:
    import av

    from anonstream.demo import AstronautClip

    clip = AstronautClip(frames=90, plate=True)
    try:
        source = clip.write(args.out / "astronaut.mp4")
    except (OSError, av.FFmpegError) as exc:
        raise RecorderError(f"cannot write the example clip into {args.out}: {exc}") from None
    console.print(f"example clip: {source} ({clip.frames} frames, {clip.width}x{clip.height})", markup=False)
    output = args.out / "anonymized"
    # the demo's own folder: running it again replaces what it wrote last time
    overrides = [{"sources": [{"uri": str(source)}], "record": {"dir": str(output), "overwrite": True}}, *overrides]
    settings = load_settings(args.config, overrides)
    code = _run_pipeline(settings, console, level, args.quiet)
    console.print(f"anonymized: {output / 'astronaut.mp4'}", markup=False)
    return code


def _models(settings: Settings, as_json: bool) -> int:
    import dataclasses
    import json

    from anonstream.report import render_models
    from anonstream.workers.models import catalogue

    rows = catalogue(settings)
    if as_json:
        sys.stdout.write(json.dumps([dataclasses.asdict(row) for row in rows], indent=2) + "\n")
    else:
        render_models(_stdout_console(), rows)
    return 0


def _interrupt(*_: object) -> NoReturn:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    # Until a command installs its own handlers, SIGTERM stops it like Ctrl-C: cleanly, not mid-statement.
    signal.signal(signal.SIGTERM, _interrupt)
    shown = [redact(arg) for arg in sys.argv]
    if shown != sys.argv:  # what `ps` shows of this process: a camera password on the command line is not
        setproctitle(" ".join(["anonstream", *shown[1:]]))
    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    if args.command == "config":
        sys.stdout.write(default_config_text())
        return 0
    level = _console_logging(console, args)
    try:
        check_installation(runtime=args.command in ("run", "demo", "worker", "serve"))
        overrides = _overrides(args)
        if args.command == "demo":
            return _demo(args, overrides, console, level)
        settings = load_settings(args.config, overrides)
        if args.command == "models":
            return _models(settings, args.json)
        if args.command == "run":
            return _run_pipeline(settings, console, level, args.quiet)
        if args.command == "keys":
            from anonstream.stream.keys import make_keypair

            public, secret = make_keypair(args.dir, args.name)
            sys.stdout.write(f"public key: {public}\nsecret key: {secret} (keep it on this host only)\n")
            return 0
        if args.command == "serve":
            from anonstream.service import serve

            return serve(settings)
        if args.command == "capture":
            from anonstream.stream.capture import CaptureStage
            from anonstream.stream.sources import stream_ids

            if len(settings.sources) != 1:
                raise ConfigError("anonstream capture takes exactly one --source")
            sid = stream_ids(settings.sources)[0]
            return _run_role(CaptureStage(settings.sources[0], sid, settings.capture.bind, settings), settings)
        if args.command == "worker":
            from anonstream.workers.worker import WorkerStage

            stage = WorkerStage(args.number, tuple(settings.worker.inputs), settings.worker.output, settings)
            return _run_role(stage, settings)
        from anonstream.stream.record import RecordStage

        return _run_role(RecordStage(settings.record.bind, settings, tuple(args.expect)), settings)
    except AnonstreamError as exc:
        # the message is plain text: a path or a pip extra in brackets is not markup
        message = redact(str(exc))
        console.print(Text.assemble(("anonstream: error: ", "red"), message), highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
