"""Service statistics: in-process figures for ``/v1/stats`` and Prometheus
metrics for ``/metrics`` (a registry per app, so several apps can share a
process, as the tests do)."""

from __future__ import annotations

import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LAT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class Stats:
    """Counters and recent windows (the last ``window`` requests / batches)."""

    def __init__(self, window: int = 10_000):
        self.started = time.time()
        self.requests = self.queries = self.errors = self.cache_hits = self.cache_misses = 0
        self.batches = 0
        self.latency: deque[float] = deque(maxlen=window)  # seconds per request
        self.served: deque[tuple[float, int]] = deque(maxlen=window)  # (time, queries)
        self.batch_sizes: deque[int] = deque(maxlen=window)
        self.readout: deque[float] = deque(maxlen=window)
        self.registry = CollectorRegistry()
        r = self.registry
        self.m_requests = Counter("fa_requests", "attribution requests answered", ["status"], registry=r)
        self.m_queries = Counter("fa_queries", "queries answered", registry=r)
        self.m_latency = Histogram("fa_request_seconds", "attribution request latency", buckets=_LAT_BUCKETS,
                                   registry=r)
        self.m_batch = Histogram("fa_batch_queries", "queries per readout batch", buckets=_BATCH_BUCKETS, registry=r)
        self.m_readout = Histogram("fa_readout_seconds", "readout time per batch", buckets=_LAT_BUCKETS, registry=r)
        self.m_cache = Counter("fa_cache", "result cache lookups", ["result"], registry=r)
        self.m_journal = Gauge("fa_journal_entries", "credit records waiting in the outage journal", registry=r)
        self.m_queue = Gauge("fa_queue_queries", "queries waiting for the readout", registry=r)
        self.m_reloads = Counter("fa_reloads", "store versions loaded", registry=r)

    def request(self, status: int, queries: int, seconds: float) -> None:
        self.requests += 1
        self.m_requests.labels(str(status)).inc()
        if status >= 400:
            self.errors += 1
            return
        self.queries += queries
        self.latency.append(seconds)
        self.served.append((time.time(), queries))
        self.m_queries.inc(queries)
        self.m_latency.observe(seconds)

    def batch(self, queries: int, seconds: float) -> None:
        self.batches += 1
        self.batch_sizes.append(queries)
        self.readout.append(seconds)
        self.m_batch.observe(queries)
        self.m_readout.observe(seconds)

    def cache(self, hits: int, misses: int) -> None:
        self.cache_hits += hits
        self.cache_misses += misses
        if hits:
            self.m_cache.labels("hit").inc(hits)
        if misses:
            self.m_cache.labels("miss").inc(misses)

    def snapshot(self, window_s: float = 60.0) -> dict:
        now = time.time()
        recent = sum(q for t, q in self.served if t >= now - window_s)
        lat = [x * 1000 for x in self.latency]
        looked = self.cache_hits + self.cache_misses
        return {
            "uptime_s": round(now - self.started, 3),
            "requests": self.requests, "queries": self.queries, "errors": self.errors,
            "throughput_qps": round(recent / min(window_s, max(now - self.started, 1e-9)), 3),
            "latency_ms": {f"p{int(q * 100)}": _pct(lat, q) for q in (0.5, 0.9, 0.95, 0.99)},
            "batches": self.batches,
            "batch_queries": {"mean": (sum(self.batch_sizes) / len(self.batch_sizes)) if self.batch_sizes else None,
                              "p50": _pct(list(self.batch_sizes), 0.5), "max": max(self.batch_sizes, default=None)},
            "readout_ms": {"p50": _pct([x * 1000 for x in self.readout], 0.5),
                           "p99": _pct([x * 1000 for x in self.readout], 0.99)},
            "cache": {"hits": self.cache_hits, "misses": self.cache_misses,
                      "hit_rate": round(self.cache_hits / looked, 6) if looked else None},
        }

    def prometheus(self) -> bytes:
        return generate_latest(self.registry)
