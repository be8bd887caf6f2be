"""The supervisor's sum of the workers' metrics and its text exposition."""

from __future__ import annotations

from gateway.metrics import Metrics, merge, render


def test_workers_collector_counts_are_summed_per_generation() -> None:
    a, b = Metrics().snapshot(), Metrics().snapshot()
    a["gc"] = [[3, 40], [1, 5], [0, 0]]
    b["gc"] = [[2, 10], [0, 0], [1, 7]]
    text = render(merge([a, b]))
    assert 'python_gc_collections_total{generation="0"} 5' in text
    assert 'python_gc_collections_total{generation="2"} 1' in text
    assert 'python_gc_objects_collected_total{generation="0"} 50' in text
    assert 'python_gc_objects_collected_total{generation="1"} 5' in text
    assert 'python_gc_objects_collected_total{generation="2"} 7' in text


def test_a_duration_counts_in_every_bucket_whose_bound_it_does_not_exceed() -> None:
    m = Metrics()
    # On a bound (le is "less than or equal"), just above one, below the first, beyond the last.
    for seconds in (0.001, 0.0010001, 0.0001, 0.05, 11.0, 10.0):
        m.observe("workspace", 200, seconds)
    text = render(merge([m.snapshot()]))
    buckets = {
        line.split('le="')[1].split('"')[0]: int(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("wsgate_request_duration_seconds_bucket")
    }
    assert buckets["0.0005"] == 1  # 0.0001
    assert buckets["0.001"] == 2  # and 0.001 itself
    assert buckets["0.0025"] == 3  # and 0.0010001
    assert buckets["0.05"] == 4
    assert buckets["5.0"] == 4
    assert buckets["10.0"] == 5  # 10.0 itself
    assert buckets["+Inf"] == 6  # and 11.0
    assert "wsgate_request_duration_seconds_count 6" in text
    assert 'wsgate_requests_total{kind="workspace",status="200"} 6' in text
