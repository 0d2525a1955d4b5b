"""What ``anonstream run`` prints at the end: one table per stream."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from anonstream.process import Finished
from anonstream.stream.metrics import INTERVALS, RunSummary, StreamSummary
from anonstream.workers.models import ModelInfo


def _stream_table(s: StreamSummary) -> Table:
    table = Table(title=f"stream {s.stream}", title_justify="left", show_edge=False)
    table.add_column("stage")
    for p in ("p50 ms", "p95 ms", "p99 ms"):
        table.add_column(p, justify="right")
    for label, _, _, _ in INTERVALS:
        if label in s.latency_ms:
            p50, p95, p99 = s.latency_ms[label]
            style = "bold" if label == "end to end" else None
            table.add_row(label, f"{p50:.1f}", f"{p95:.1f}", f"{p99:.1f}", style=style)
    return table


def _by_stage(total: int, by: dict[str, int]) -> str:
    """ "12 (capture 2, worker 10)": where a count came from, when it is not zero."""
    return f"{total} ({', '.join(f'{stage} {n}' for stage, n in by.items() if n)})" if total else "0"


def lost_frames(stream: StreamSummary, names: list[str] | None = None) -> str:
    """ "#12, #40-41", or the images' names where known; "..." when more runs were lost than the summary keeps."""
    parts = []
    for first, count in stream.lost_runs:
        if names is not None and first + count <= len(names):
            parts += names[first : first + count]
        else:
            parts.append(f"#{first}" if count == 1 else f"#{first}-{first + count - 1}")
    shown = sum(count for _, count in stream.lost_runs)
    return ", ".join(parts) + (", ..." if shown < stream.lost else "")


COLUMNS = (
    "in",
    "out",
    "dropped",
    "lost",
    "skipped",
    "refused",
    "full mask",
    "tracker added",
    "masks",
    "outages",
    "fps",
)
TRACKER_ADDED = (
    "tracker added: frames where the tracker kept a mask on something the detectors had found in earlier "
    "frames but not in that one (turned away, blurred, or missed)"
)


def render(
    console: Console,
    summary: RunSummary | None,
    reports: list[Finished],
    worker_restarts: int = 0,
    never_connected: frozenset[str] = frozenset(),
) -> None:
    """The end-of-run tables; a live stream in ``never_connected`` gets one line saying so instead of zeros."""
    if summary is None:
        console.print("[red]no summary: the record process did not report[/red]")
        return
    counts = Table(title="frames", title_justify="left", show_edge=False)
    counts.add_column("stream", no_wrap=True)
    for column in COLUMNS:
        counts.add_column(column, justify="right")
    for s in summary.streams:
        if s.stream in never_connected:
            counts.add_row(s.stream, "[red]never connected[/red]", *[""] * (len(COLUMNS) - 1))
            continue
        counts.add_row(
            s.stream,
            str(s.frames_in),
            str(s.frames_out),
            _by_stage(s.dropped, s.dropped_by),
            str(s.lost),
            str(s.skipped),
            str(s.refused),
            str(s.full_masked),
            str(s.tracker_added),
            ", ".join(f"{label} {count}" for label, count in s.masks.items()) or "0",
            f"{s.outages} ({s.down_s:.1f} s)" if s.outages else "0",
            f"{s.fps:.1f}",
        )
    console.print(counts)
    if any(s.tracker_added for s in summary.streams):
        console.print(TRACKER_ADDED, style="dim")
    for s in summary.streams:
        if s.stream not in never_connected:
            console.print()
            console.print(_stream_table(s))
    extra: dict[str, int] = {}
    for report in reports:
        for key in ("rejected", "full_masked", "unmaskable", "late", "hostile", "denied"):
            extra[key] = extra.get(key, 0) + report.counters.get(key, 0)
    notes = [f"{v} {k.replace('_', ' ')}" for k, v in extra.items() if v]
    if worker_restarts:
        notes.append(f"{worker_restarts} worker restart(s)")
    if notes:
        console.print("\n[yellow]" + ", ".join(notes) + "[/yellow]")


def render_models(console: Console, rows: list[ModelInfo]) -> None:
    """``anonstream models``: one block per model, with everything a licence review asks for."""
    for row in rows:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        state = "on" if row.active else "off (not in `detect`)"
        table.add_row("detector", f"{row.detector}, family {row.family}, {state}")
        table.add_row("classes", ", ".join(row.classes))
        table.add_row("file", row.file)
        if row.sha256:
            table.add_row("sha256", row.sha256 + (f"  [red]{row.note}[/red]" if row.note else ""))
        if row.package:
            table.add_row("package", row.package)
        table.add_row("licence", row.licence)
        table.add_row("upstream", row.upstream)
        if row.evidence:
            table.add_row("stated in", row.evidence)
        table.add_row("looks at", row.inputs)
        console.print(table)
        console.print()
