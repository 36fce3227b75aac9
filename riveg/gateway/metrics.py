"""Prometheus metrics of the gateway: requests by route and status, posts by outcome, and the
backlog of jobs (served at ``/metrics`` on the gateway's own port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "riveg_gateway_requests_total",
    "HTTP requests by route template, method and status code.",
    ["route", "method", "code"],
)
LATENCY = Histogram(
    "riveg_gateway_request_duration_seconds",
    "Time the gateway took to answer a request.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
POSTS = Counter(
    "riveg_gateway_posts_total",
    "Posts submitted, by outcome: accepted (a new job), duplicate (an existing job), refused.",
    ["outcome"],
)
BACKLOG = Gauge("riveg_gateway_backlog_jobs", "Jobs queued or running (what 429 compares).")
