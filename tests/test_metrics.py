"""Per-stream metrics: percentiles in constant memory, counts from the frames' own headers."""

from __future__ import annotations

import numpy as np
import pytest

from anonstream.stream.detections import Detections
from anonstream.stream.metrics import PERCENTILES, LatencyHistogram, StreamMetrics
from anonstream.stream.wire import EndOfStream, FrameHeader, Stage


@pytest.mark.parametrize("sigma", [0.1, 1.0, 3.0])
def test_histogram_percentiles_are_within_one_percent_of_exact(sigma: float) -> None:
    latencies = np.random.default_rng(7).lognormal(mean=np.log(30.0), sigma=sigma, size=20000)
    histogram = LatencyHistogram()
    for ms in latencies:
        histogram.add(float(ms))
    exact = np.percentile(latencies, PERCENTILES)
    np.testing.assert_allclose(histogram.percentiles(), exact, rtol=0.01)


def test_histogram_clamps_what_is_out_of_range() -> None:
    histogram = LatencyHistogram()
    for ms in (-5.0, 0.0, 1e9):
        histogram.add(ms)
    p50, _, p99 = histogram.percentiles()
    assert p50 == LatencyHistogram.LOWEST_MS and p99 > 5 * 60 * 1000


def test_summary_counts_and_latency_from_frames() -> None:
    metrics = StreamMetrics("cam")
    for seq in range(100):
        header = FrameHeader("cam", seq, seq, seq * 1000, (1, 30000), (30, 1), (2, 2, 3), "uint8", "bgr")
        header.boxes = [(0, 0, 1, 1, 0.9, "face")] + [(1, 1, 2, 2, 0.5, "plate")] * (seq % 2)
        held = Detections.of("plate", np.zeros((int(seq % 3 == 0), 4)))  # held by the tracker in every third frame
        start = 10**12 + seq * 33_333_333  # 30 fps
        header.stamp(Stage.CAPTURED, start)
        header.stamp(Stage.SENT, start)
        header.stamp(Stage.RECORDED, start + (20 + seq % 10) * 1_000_000)  # 20..29 ms end to end
        metrics.frame(header, held)
    metrics.ended(EndOfStream("cam", frames=104, dropped=2), None)
    metrics.dropped_by["worker"] += 3
    summary = metrics.summary()
    assert (summary.frames_in, summary.frames_out, summary.dropped) == (106, 100, 5)
    assert summary.dropped_by == {"capture": 2, "worker": 3}
    assert set(summary.latency_ms) == {"capture → send", "end to end"}  # only stages stamped
    np.testing.assert_allclose(summary.latency_ms["end to end"], (24.5, 29, 29), rtol=0.02)
    assert summary.fps == pytest.approx(30, rel=0.02)
    assert summary.masks == {"face": 100, "plate": 50 + 34} and summary.tracker_added == 34
