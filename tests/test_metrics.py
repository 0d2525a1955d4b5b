"""Per-stream metrics: percentiles in constant memory, counts from the frames' own headers."""

from __future__ import annotations

import numpy as np
import pytest

from anonstream.stream.detections import Detections
from anonstream.stream.metrics import (
    LATENCY_BUCKETS_S,
    PERCENTILES,
    RECENT_S,
    Buckets,
    LatencyHistogram,
    RecentWindow,
    StreamMetrics,
)
from anonstream.stream.wire import EndOfStream, FrameHeader, Stage


@pytest.mark.parametrize("sigma", [0.1, 1.0, 3.0])
def test_histogram_percentiles_are_within_one_percent_of_exact(sigma: float) -> None:
    latencies = np.random.default_rng(7).lognormal(mean=np.log(30.0), sigma=sigma, size=20000)
    histogram = LatencyHistogram()
    for ms in latencies:
        histogram.add(float(ms))
    exact = np.percentile(latencies, PERCENTILES)
    np.testing.assert_allclose(histogram.percentiles(), exact, rtol=0.01)


def test_prometheus_buckets_count_what_is_at_or_below_each_bound() -> None:
    latencies = np.random.default_rng(3).lognormal(mean=np.log(40.0), sigma=1.5, size=20000)
    histogram = LatencyHistogram()
    for ms in latencies:
        histogram.add(float(ms))
    buckets = histogram.buckets()
    assert buckets.bounds == LATENCY_BUCKETS_S and buckets.count == len(latencies)
    assert buckets.total == pytest.approx(latencies.sum() / 1000)
    assert list(buckets.cumulative) == sorted(buckets.cumulative)
    for bound, counted in zip(LATENCY_BUCKETS_S, buckets.cumulative, strict=True):
        # a bin 1 % wide that straddles the bound is counted above it
        assert (latencies <= bound * 1000 * 0.99).sum() <= counted <= (latencies <= bound * 1000).sum()
    twice = buckets + buckets
    assert twice.count == 2 * buckets.count and twice.cumulative[5] == 2 * buckets.cumulative[5]


def test_batch_buckets_from_counted_sizes() -> None:
    from collections import Counter

    buckets = Buckets.of_values(Counter({1: 5, 3: 2, 8: 1}), (1.0, 2.0, 4.0, 8.0))
    assert buckets.cumulative == (5, 5, 7, 8) and buckets.count == 8 and buckets.total == 19


def test_recent_window_covers_the_last_minute_only() -> None:
    window = RecentWindow(started=0.0)
    for i in range(300):  # 10 fps for 30 s at 100 ms, then 20 fps for 60 s at 10 ms
        window.frame(i / 10, 100.0)
    window.drop(29.0, 4)
    for i in range(1200):
        window.frame(30 + i / 20, 10.0)
    window.drop(80.0)
    fps, dropped, p99 = window.figures(90.0)
    assert fps == pytest.approx(20, rel=0.02) and dropped == 1 and p99 == pytest.approx(10.0)
    assert window.figures(90.0 + RECENT_S + 1) == (0.0, 0, None)
    young = RecentWindow(started=0.0)
    for i in range(20):
        young.frame(i / 10, 5.0)
    assert young.figures(2.0)[0] == pytest.approx(10)  # a stream 2 s old: 20 frames over 2 s, not over a minute


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
        metrics.frame(header, held, now=seq / 30)
    metrics.ended(EndOfStream("cam", frames=104, dropped=2), None)
    metrics.dropped_by["worker"] += 3
    summary = metrics.summary()
    assert (summary.frames_in, summary.frames_out, summary.dropped) == (106, 100, 5)
    assert summary.dropped_by == {"capture": 2, "worker": 3}
    assert set(summary.latency_ms) == {"capture → send", "end to end"}  # only stages stamped
    np.testing.assert_allclose(summary.latency_ms["end to end"], (24.5, 29, 29), rtol=0.02)
    assert summary.fps == pytest.approx(30, rel=0.02)
    assert summary.masks == {"face": 100, "plate": 50 + 34} and summary.tracker_added == 34
