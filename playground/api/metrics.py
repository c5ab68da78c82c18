"""GET /health and GET /metrics (Prometheus text format, version 0.0.4).

Engine figures come from `engine.metrics.EngineMetrics` (finished requests by reason, frames, TTFB and
RTF histograms) and from a live read of the scheduler and KV pool (`AsyncEngine.status()`); the API
adds its own counters (responses by route and status, voice clips encoded).
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from engine import EngineMetrics, Histogram
from playground.state import AppState

MODEL_ID = "s2-pro"
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ApiCounters:
    """Counters the API keeps itself; only touched from the event loop, so no lock is needed."""

    def __init__(self) -> None:
        self.http: Counter[tuple[str, str, int]] = Counter()
        self.voice_encodes = 0  # clips run through the codec encoder (cache misses)

    def http_response(self, method: str, route: str, status: int) -> None:
        self.http[(method, route, status)] += 1


async def engine_status(state: AppState) -> dict[str, Any]:
    status = await state.engine.status()
    status["kv_blocks_used"] = status["kv_blocks_total"] - status["kv_blocks_free"]
    return status


def _metric(lines: list[str], name: str, kind: str, help_text: str) -> None:
    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]


def _histogram(lines: list[str], name: str, hist: Histogram) -> None:
    counts = hist.counts or [0] * len(hist.buckets)  # already cumulative: observe() bumps every edge >= value
    for edge, count in zip(hist.buckets, counts):
        lines.append(f'{name}_bucket{{le="{edge:g}"}} {count}')
    lines += [f'{name}_bucket{{le="+Inf"}} {hist.n}', f"{name}_sum {hist.total:.6g}", f"{name}_count {hist.n}"]


def _engine_lines(metrics: EngineMetrics) -> list[str]:
    lines: list[str] = []
    with metrics.lock:
        _metric(lines, "s2pro_requests_finished_total", "counter", "Engine requests finished, by reason.")
        for reason, count in sorted(metrics.requests.items()):
            lines.append(f's2pro_requests_finished_total{{reason="{reason}"}} {count}')
        _metric(lines, "s2pro_frames_total", "counter", "Audio frames generated (2048 samples each).")
        lines.append(f"s2pro_frames_total {metrics.frames}")
        _metric(lines, "s2pro_ttfb_ms", "histogram", "Time from submission to first audio, milliseconds.")
        _histogram(lines, "s2pro_ttfb_ms", metrics.ttfb_ms)
        _metric(lines, "s2pro_rtf", "histogram", "Real-time factor (generation time / audio time).")
        _histogram(lines, "s2pro_rtf", metrics.rtf)
    return lines


def _status_lines(status: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    gauges = (("s2pro_queue_length", "waiting", "Requests waiting for admission."),
              ("s2pro_running_requests", "running", "Requests being decoded."),
              ("s2pro_kv_blocks_used", "kv_blocks_used", "KV cache blocks held by requests."),
              ("s2pro_kv_blocks_total", "kv_blocks_total", "KV cache blocks in the pool."),
              ("s2pro_prefix_hit_rate", "prefix_hit_rate", "Share of prompt tokens served from the prefix cache."))
    for name, key, help_text in gauges:
        _metric(lines, name, "gauge", help_text)
        lines.append(f"{name} {status[key]:.6g}")
    return lines


def _api_lines(counters: ApiCounters) -> list[str]:
    lines: list[str] = []
    _metric(lines, "s2pro_http_responses_total", "counter", "API responses, by method, route and status.")
    for (method, route, status), n in sorted(counters.http.items()):
        lines.append(f's2pro_http_responses_total{{method="{method}",route="{route}",status="{status}"}} {n}')
    _metric(lines, "s2pro_voice_encodes_total", "counter", "Voice clips encoded (content-hash cache misses).")
    lines.append(f"s2pro_voice_encodes_total {counters.voice_encodes}")
    return lines


def router(state: AppState, counters: ApiCounters) -> APIRouter:
    r = APIRouter()

    @r.get("/health", response_model=None)
    async def health() -> dict[str, Any] | JSONResponse:
        # Read without the device thread: it may be the one that hangs.
        engine = state.engine.health()
        body = {"status": "ok" if engine["healthy"] else "unhealthy", "model": MODEL_ID,
                "device": str(state.loaded.device), "dtype": str(state.loaded.dtype).removeprefix("torch."),
                "demo": state.demo, "running": engine["running"], "waiting": engine["waiting"],
                "kv_blocks_used": engine["kv_blocks_total"] - engine["kv_blocks_free"],
                "kv_blocks_total": engine["kv_blocks_total"]}
        if not engine["healthy"]:
            body |= {"reason": engine["reason"], "step": engine["step"], "phase": engine["phase"]}
            return JSONResponse(body, status_code=503)
        return body

    @r.get("/metrics")
    async def metrics() -> Response:
        status = await engine_status(state)
        lines = _engine_lines(state.engine.engine.metrics) + _status_lines(status) + _api_lines(counters)
        return Response("\n".join(lines) + "\n", media_type=PROMETHEUS_TYPE)

    return r
