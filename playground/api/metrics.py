"""GET /health and GET /metrics (Prometheus text format, written by prometheus_client).

Engine figures come from `engine.metrics.EngineMetrics` (finished requests by reason, frames, TTFB and
RTF histograms) and from a live read of the scheduler and KV pool (`AsyncEngine.status()`); the API
adds its own counters (responses by route and status, voice clips encoded).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from engine import EngineMetrics, Histogram
from playground.state import AppState

MODEL_ID = "s2-pro"
disable_created_metrics()  # no `_created` series beside each counter: the names stay as documented


class ApiCounters:
    """The API's own counters, in the registry /metrics exposes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http = Counter("s2pro_http_responses", "API responses, by method, route and status.",
                            ["method", "route", "status"], registry=self.registry)
        self.voice_encodes = Counter("s2pro_voice_encodes", "Voice clips encoded (content-hash cache misses).",
                                     registry=self.registry)

    def http_response(self, method: str, route: str, status: int) -> None:
        self.http.labels(method, route, str(status)).inc()


class EngineCollector(Collector):
    """The engine's figures at scrape time: its counters and histograms (EngineMetrics) and a live
    read of the scheduler and KV pool (`status`, set by the route just before each scrape)."""

    def __init__(self, metrics: EngineMetrics) -> None:
        self.metrics = metrics
        self.status: dict[str, Any] = {}

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        with m.lock:
            finished = CounterMetricFamily("s2pro_requests_finished", "Engine requests finished, by reason.",
                                           labels=["reason"])
            for reason, count in sorted(m.requests.items()):
                finished.add_metric([reason], count)
            yield finished
            yield CounterMetricFamily("s2pro_frames", "Audio frames generated (2048 samples each).", value=m.frames)
            yield _histogram("s2pro_ttfb_ms", "Time from submission to first audio, milliseconds.", m.ttfb_ms)
            yield _histogram("s2pro_rtf", "Real-time factor (generation time / audio time).", m.rtf)
        for name, key, help_text in _GAUGES:
            if key in self.status:
                yield GaugeMetricFamily(name, help_text, value=self.status[key])


_GAUGES = (("s2pro_queue_length", "waiting", "Requests waiting for admission."),
           ("s2pro_running_requests", "running", "Requests being decoded."),
           ("s2pro_kv_blocks_used", "kv_blocks_used", "KV cache blocks held by requests."),
           ("s2pro_kv_blocks_total", "kv_blocks_total", "KV cache blocks in the pool."),
           ("s2pro_prefix_hit_rate", "prefix_hit_rate", "Share of prompt tokens served from the prefix cache."))


def _histogram(name: str, help_text: str, hist: Histogram) -> HistogramMetricFamily:
    counts = hist.counts or [0] * len(hist.buckets)  # already cumulative: observe() bumps every edge >= value
    buckets = [(f"{edge:g}", count) for edge, count in zip(hist.buckets, counts)] + [("+Inf", hist.n)]
    return HistogramMetricFamily(name, help_text, buckets=buckets, sum_value=hist.total)


async def engine_status(state: AppState) -> dict[str, Any]:
    status = await state.engine.status()
    status["kv_blocks_used"] = status["kv_blocks_total"] - status["kv_blocks_free"]
    return status


def router(state: AppState, counters: ApiCounters) -> APIRouter:
    r = APIRouter()
    collector = EngineCollector(state.engine.metrics)
    counters.registry.register(collector)

    @r.get("/health", response_model=None)
    async def health() -> dict[str, Any] | JSONResponse:
        # Read without the device thread: it may be the one that hangs.
        engine = state.engine.health()
        body = {"status": "ok" if engine["healthy"] else "unhealthy", "model": MODEL_ID,
                "device": str(state.loaded.device), "dtype": str(state.loaded.dtype).removeprefix("torch."),
                "weights": state.loaded.weights, "demo": state.demo, "running": engine["running"],
                "waiting": engine["waiting"],
                "kv_blocks_used": engine["kv_blocks_total"] - engine["kv_blocks_free"],
                "kv_blocks_total": engine["kv_blocks_total"]}
        if not engine["healthy"]:
            body |= {"reason": engine["reason"], "step": engine["step"], "phase": engine["phase"]}
            return JSONResponse(body, status_code=503)
        return body

    @r.get("/metrics")
    async def metrics() -> Response:
        collector.status = await engine_status(state)  # scrapes run on the event loop, one at a time
        return Response(generate_latest(counters.registry), media_type=CONTENT_TYPE_LATEST)

    return r
