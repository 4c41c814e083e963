"""A minimal Prometheus registry: counters, gauges and histograms rendered in the text format 0.0.4.

Small on purpose (no prometheus-client dependency): an update is a dict lookup and a few integer
adds under a lock, cheap enough for the request path; rendering happens only on scrape.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Iterable, Sequence

Labels = tuple[str, ...]
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value != value:
        return "NaN"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labelnames)
        self._values: dict[Labels, float] = {}
        if not self.labelnames:
            self._values[()] = 0.0  # an unlabelled counter is exported from the start

    def inc(self, labels: Labels = (), amount: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, labels: Labels = ()) -> float:
        return self._values.get(labels, 0.0)

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.labelnames, k)} {_number(v)}" for k, v in items]


class Gauge(_Metric):
    """A gauge set by the code, or read from `source` (labels -> value) at every scrape."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        source: Callable[[], Iterable[tuple[Labels, float]]] | None = None,
    ) -> None:
        super().__init__(name, help_text, labelnames)
        self._values: dict[Labels, float] = {}
        self._source = source

    def set(self, value: float, labels: Labels = ()) -> None:
        with self._lock:
            self._values[labels] = float(value)

    def samples(self) -> list[str]:
        if self._source is not None:
            items = sorted(self._source())
        else:
            with self._lock:
                items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.labelnames, k)} {_number(v)}" for k, v in items]


class CallbackCounter(Gauge):
    """A counter whose value another component keeps (read at scrape)."""

    kind = "counter"


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, buckets: Sequence[float], labelnames: Sequence[str] = ()
    ) -> None:
        super().__init__(name, help_text, labelnames)
        self.bounds = sorted(float(b) for b in buckets)
        # labels -> [per-bucket counts (last = +Inf), sum]
        self._series: dict[Labels, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, labels: Labels = ()) -> None:
        index = bisect.bisect_left(self.bounds, value)  # le semantics: value <= bound
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                series = self._series[labels] = ([0] * (len(self.bounds) + 1), [0.0])
            series[0][index] += 1
            series[1][0] += value

    def count(self, labels: Labels = ()) -> int:
        series = self._series.get(labels)
        return sum(series[0]) if series else 0

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted((k, (list(c), s[0])) for k, (c, s) in self._series.items())
        lines = []
        for labels, (counts, total) in items:
            running = 0
            for bound, n in zip([*self.bounds, math.inf], counts, strict=True):
                running += n
                le = f'le="{_number(bound)}"'
                lines.append(f"{self.name}_bucket{_labels(self.labelnames, labels, le)} {running}")
            lines.append(f"{self.name}_sum{_labels(self.labelnames, labels)} {_number(total)}")
            lines.append(f"{self.name}_count{_labels(self.labelnames, labels)} {running}")
        return lines


class Registry:
    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def add(self, metric: _Metric) -> _Metric:
        self._metrics.append(metric)
        return metric

    def counter(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Counter:
        metric = Counter(name, help_text, labelnames)
        self.add(metric)
        return metric

    def gauge(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        source: Callable[[], Iterable[tuple[Labels, float]]] | None = None,
    ) -> Gauge:
        metric = Gauge(name, help_text, labelnames, source)
        self.add(metric)
        return metric

    def counter_from(
        self,
        name: str,
        help_text: str,
        source: Callable[[], Iterable[tuple[Labels, float]]],
        labelnames: Sequence[str] = (),
    ) -> CallbackCounter:
        metric = CallbackCounter(name, help_text, labelnames, source)
        self.add(metric)
        return metric

    def histogram(
        self, name: str, help_text: str, buckets: Sequence[float], labelnames: Sequence[str] = ()
    ) -> Histogram:
        metric = Histogram(name, help_text, buckets, labelnames)
        self.add(metric)
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics:
            lines.extend(metric.header())
            lines.extend(metric.samples())
        return "\n".join(lines) + "\n"
