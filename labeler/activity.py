"""Images finished recently, from the components' own /metrics counters.

``labeler up`` samples its components every few seconds and keeps a minute of samples, so
``labeler status`` can say how many images were labeled (and failed) in the last minute without
a Prometheus server. A counter that went down belongs to a restarted process: its new value is
what it finished since.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections import deque
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

HTTP_TIMEOUT = 3.0
SAMPLE_SECONDS = 5.0
WINDOW_SECONDS = 60.0


def images_finished(urls: list[str]) -> dict[str, int]:
    """``labeler_images_processed_total`` summed over the components at ``urls``, by outcome."""
    return counter_totals(urls, "labeler_images_processed", "outcome")


def counter_totals(urls: list[str], family_name: str, label: str) -> dict[str, int]:
    """A counter family summed over the components' /metrics at ``urls``, by one label."""
    totals: dict[str, int] = {}
    for base in urls:
        try:
            # base is http://127.0.0.1:<port> from the record, or a checked --component URL
            with urllib.request.urlopen(f"{base}/metrics", timeout=HTTP_TIMEOUT) as reply:  # noqa: S310
                text = reply.read().decode()
        except (OSError, ValueError):
            continue
        for family in text_string_to_metric_families(text):
            if family.name != family_name:
                continue
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    value = sample.labels.get(label, "")
                    totals[value] = totals.get(value, 0) + int(sample.value)
    return totals


class ActivitySampler(threading.Thread):
    """Samples the components' counters every SAMPLE_SECONDS; :meth:`recent` is the last minute."""

    def __init__(self, urls: list[str]) -> None:
        super().__init__(name="labeler-activity", daemon=True)
        self.urls = urls
        self._samples: deque[tuple[float, dict[str, int]]] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()  # not _stop: Thread has a method of that name

    def run(self) -> None:
        while not self._stopping.is_set():
            totals = images_finished(self.urls)
            now = time.time()
            with self._lock:
                self._samples.append((now, totals))
                while len(self._samples) > 1 and self._samples[1][0] <= now - WINDOW_SECONDS:
                    self._samples.popleft()
            self._stopping.wait(SAMPLE_SECONDS)

    def stop(self) -> None:
        self._stopping.set()

    def recent(self) -> dict[str, Any] | None:
        """``{"window_seconds", "at", <outcome>: count}`` over up to the last minute."""
        with self._lock:
            if len(self._samples) < 2:
                return None
            (first, old), (last, new) = self._samples[0], self._samples[-1]
        counts = {k: v - old.get(k, 0) if v >= old.get(k, 0) else v for k, v in new.items()}
        return {
            "window_seconds": round(last - first),
            "at": last,
            "labeled": 0,
            "error": 0,
            **counts,
        }
