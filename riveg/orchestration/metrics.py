"""Prometheus metrics of the pipeline's workers: task runs by outcome and their durations, and
posts finished by outcome with their end-to-end latency."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

TASKS = Counter(
    "riveg_tasks_total",
    "Pipeline task runs by task and outcome (success, retry, bad_post, failure, poison, "
    "done_before: skipped, its result was stored already).",
    ["task", "outcome"],
)
TASK_SECONDS = Histogram(
    "riveg_task_duration_seconds",
    "Time one run of a pipeline task took.",
    ["task"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
POSTS_FINISHED = Counter(
    "riveg_posts_finished_total", "Posts whose job ended, by outcome (done, failed).", ["outcome"]
)
POST_SECONDS = Histogram(
    "riveg_post_duration_seconds",
    "Time from a post's submission to the end of its job.",
    ["outcome"],
    buckets=(0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
)
