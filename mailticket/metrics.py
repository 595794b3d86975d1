"""Prometheus metrics and the loopback HTTP endpoint (`/healthz`, `/metrics`).

The only module that imports prometheus_client.  The daemon records into these
objects; the endpoint serves them on `[daemon] http` (127.0.0.1 by default: it is
for the local Prometheus agent and the service manager, not for the world).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.received = Counter(
            "mailticket_messages_total",
            "Messages processed, by source and outcome",
            ["source", "outcome"],
            registry=self.registry,
        )
        self.tickets_created = Counter(
            "mailticket_tickets_created_total", "Tickets created", registry=self.registry
        )
        self.outbox_depth = Gauge(
            "mailticket_outbox_depth",
            "Outgoing messages not yet sent, by state",
            ["state"],
            registry=self.registry,
        )
        self.delivery_failures = Counter(
            "mailticket_delivery_failures_total",
            "Failed delivery attempts, by kind (retry, dead)",
            ["kind"],
            registry=self.registry,
        )
        self.deliveries = Counter("mailticket_deliveries_total", "Messages delivered", registry=self.registry)
        self.transport_up = Gauge(
            "mailticket_outbox_transport_up",
            "1 when the last delivery pass could use its transport (the smarthost answered), else 0",
            registry=self.registry,
        )
        self.restarts = Counter(
            "mailticket_process_restarts_total",
            "Child processes started again after they died",
            ["process"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mailticket_pipeline_seconds",
            "Time from receipt to commit of a processed message",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class HttpEndpoint:
    """A tiny HTTP server in a thread: `/healthz` (JSON, 200 or 503) and `/metrics`."""

    def __init__(
        self, host: str, port: int, metrics: Metrics, health: Callable[[], tuple[bool, dict]]
    ) -> None:
        metrics_ref, health_ref = metrics, health

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/metrics"):
                    body, ctype, code = metrics_ref.render(), CONTENT_TYPE_LATEST, 200
                elif self.path.startswith("/healthz"):
                    try:
                        ok, detail = health_ref()
                    except Exception as exc:  # noqa: BLE001 - a health check that fails is a 503
                        ok, detail = False, {"error": f"{type(exc).__name__}: {exc}"}
                    body = json.dumps({"ok": ok, **detail}).encode()
                    ctype, code = "application/json", 200 if ok else 503
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:  # quiet: one line per scrape is noise
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
