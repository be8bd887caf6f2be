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

