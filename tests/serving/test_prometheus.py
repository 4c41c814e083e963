"""The minimal Prometheus registry renders valid, cumulative text."""

from __future__ import annotations

from serving.prometheus import Registry


def test_counter_gauge_histogram_render() -> None:
    registry = Registry()
    requests = registry.counter("x_requests_total", "requests", ("variant", "status"))
    latency = registry.histogram("x_seconds", "latency", (0.1, 1.0), ("variant",))
    registry.gauge("x_up", "up", source=lambda: [((), 1.0)])
    registry.counter("x_plain_total", "plain")
    requests.inc(("a", "200"))
    requests.inc(("a", "200"))
    requests.inc(('q"uote\\', "500"))
    for value in (0.05, 0.1, 0.5, 3.0):
        latency.observe(value, ("a",))
    text = registry.render()
    assert 'x_requests_total{variant="a",status="200"} 2' in text
    assert 'x_requests_total{variant="q\\"uote\\\\",status="500"} 1' in text
    assert 'x_seconds_bucket{variant="a",le="0.1"} 2' in text  # le is inclusive
    assert 'x_seconds_bucket{variant="a",le="1"} 3' in text
    assert 'x_seconds_bucket{variant="a",le="+Inf"} 4' in text
    assert 'x_seconds_count{variant="a"} 4' in text
    assert 'x_seconds_sum{variant="a"} 3.65' in text
    assert "x_up 1" in text and "x_plain_total 0" in text
    assert "# TYPE x_seconds histogram" in text and text.endswith("\n")
    assert latency.count(("a",)) == 4 and requests.value(("a", "200")) == 2
