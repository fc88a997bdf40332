"""Prometheus metrics of a scoring service (`anomclip watch` and `anomclip serve`), on prometheus-client.

One `ServiceMetrics` per service, on its own registry (two services in one process do not mix counts):

    anomclip_inputs_total{source}                  inputs taken in (files, frames, HTTP requests)
    anomclip_verdicts_total{category,decision}     verdicts made (decision "" without a threshold, "error")
    anomclip_errors_total{stage}                   errors by stage (source, decode, scoring, request, ...)
    anomclip_latency_seconds{stage}                histogram: "verdict" = input complete -> verdict journaled
                                                   (serve: request in -> answer out); "delivery" = -> sink confirmed
    anomclip_queue_depth{source}                   inputs waiting to be scored
    anomclip_dropped_frames_total{source}          live frames dropped because scoring lagged (latest wins)
    anomclip_sink_backlog{sink}                    verdicts journaled and not yet confirmed by the sink
    anomclip_sink_delivered_total{sink}            verdicts the sink confirmed
    anomclip_sink_failures_total{sink}             failed delivery attempts

`MetricsServer` serves GET /metrics (the text exposition format) and GET /health (JSON from a callback;
503 while it says not ok) on a background thread.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServiceMetrics:
    def __init__(self, namespace: str = "anomclip"):
        self.registry = CollectorRegistry()
        kw = {"namespace": namespace, "registry": self.registry}
        self.inputs = Counter("inputs", "Inputs taken in", ["source"], **kw)
        self.verdicts = Counter("verdicts", "Verdicts made", ["category", "decision"], **kw)
        self.errors = Counter("errors", "Errors by stage", ["stage"], **kw)
        self.latency = Histogram("latency_seconds", "Seconds from input complete to verdict (stage=verdict) or to "
                                 "the sink's confirmation (stage=delivery)", ["stage"], buckets=LATENCY_BUCKETS, **kw)
        self.queue_depth = Gauge("queue_depth", "Inputs waiting to be scored", ["source"], **kw)
        self.dropped_frames = Counter("dropped_frames", "Live frames dropped (latest wins)", ["source"], **kw)
        self.sink_backlog = Gauge("sink_backlog", "Verdicts not yet confirmed by the sink", ["sink"], **kw)
        self.sink_delivered = Counter("sink_delivered", "Verdicts confirmed by the sink", ["sink"], **kw)
        self.sink_failures = Counter("sink_failures", "Failed delivery attempts", ["sink"], **kw)

    def verdict(self, category: str, decision: str, seconds: Optional[float] = None) -> None:
        self.verdicts.labels(category=category, decision=decision).inc()
        if seconds is not None:
            self.latency.labels(stage="verdict").observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    content_type = CONTENT_TYPE_LATEST


class MetricsServer:
    """GET /metrics and GET /health on host:port (port 0: a free one; see `.port`), on a daemon thread."""

    def __init__(self, metrics: ServiceMetrics, health: Callable[[], dict], host: str = "127.0.0.1", port: int = 0):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                path = self.path.split("?")[0].rstrip("/")
                if path == "/metrics":
                    return self._answer(200, outer.metrics.exposition(), outer.metrics.content_type)
                if path == "/health":
                    state = outer.health()
                    return self._answer(200 if state.get("status") == "ok" else 503, json.dumps(state).encode(),
                                        "application/json")
                self._answer(404, b'{"error": "GET /metrics or /health"}', "application/json")

            def _answer(self, status, body, content_type):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # scrapes every few seconds: not worth a log line each
                pass

        self.metrics, self.health = metrics, health
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.host, self.port = host, self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
