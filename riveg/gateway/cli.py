"""``riveg gateway`` (the HTTP API) and the commands that speak to it: ``riveg submit``,
``riveg status``, ``riveg result``."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import uvicorn
from kombu import Connection

from riveg.core.cli import EXISTING_FILE, cli_settings, config_option
from riveg.core.config import Settings
from riveg.core.logging import get_logger
from riveg.core.network import is_loopback_host
from riveg.core.observability import setup_tracing
from riveg.gateway.amqp import start_consumers
from riveg.gateway.app import create_app, load_api_keys, with_body_limit
from riveg.gateway.client import GatewayClient, GatewayError
from riveg.gateway.intake import Intake
from riveg.orchestration.commands import broker_option, pipeline_runtime
from riveg.orchestration.jobs import RedisJobStore
from riveg.orchestration.runtime import Runtime

log = get_logger("riveg.gateway")


def ready_checks(settings: Settings, runtime: Runtime) -> dict[str, Any]:
    """What /readyz checks: the object store, and with a broker the broker and job records."""
    checks: dict[str, Any] = {"store": lambda: runtime.store.exists("readyz-probe")}
    if not settings.embedded:
        url = settings.broker.url.get_secret_value()  # type: ignore[union-attr]

        def broker() -> None:
            with Connection(url, connect_timeout=3) as connection:
                connection.ensure_connection(max_retries=1)

        checks["broker"] = broker
        jobs = runtime.jobs
        if isinstance(jobs, RedisJobStore):
            checks["job_records"] = jobs.ping
    return checks


@click.command()
@click.option("--host", help="Address to bind (default RIVEG_GATEWAY_HOST, 127.0.0.1).")
@click.option("--port", type=int, help="Port to bind (default RIVEG_GATEWAY_PORT, 8080).")
@click.option(
    "--intake/--no-intake",
    "intake_queue",
    default=True,
    show_default=True,
    help="With a broker: also take posts from the AMQP queue <queue_prefix>.intake.",
)
@broker_option
@config_option
def gateway(
    host: str | None,
    port: int | None,
    intake_queue: bool,
    broker_url: str | None,
    config_file: str | None,
) -> None:
    """The HTTP API: submit posts, get jobs and results (/v1; OpenAPI at /openapi.json)."""
    settings = cli_settings(
        config_file, broker_url=broker_url, gateway_host=host, gateway_port=port
    )
    setup_tracing(settings, "riveg-gateway")
    bind = settings.gateway.host
    if not load_api_keys(settings.gateway.api_keys_file) and not is_loopback_host(bind):
        log.warning("no API keys (RIVEG_GATEWAY_API_KEYS_FILE): binding loopback only", asked=bind)
        bind = "127.0.0.1"
    with pipeline_runtime(settings) as runtime:
        intake = Intake(runtime)
        app = with_body_limit(
            create_app(settings, intake, ready_checks(settings, runtime)), settings
        )
        mode = "embedded" if settings.embedded else "distributed"
        log.info(
            "gateway ready",
            url=f"http://{bind}:{settings.gateway.port}",
            mode=mode,
            api_keys=settings.gateway.api_keys_file is not None,
        )
        consumers = []
        if not settings.embedded:
            consumers = start_consumers(settings, intake, take_posts=intake_queue)
            log.info("consuming", queues=[c.queue.name for c in consumers])
        try:
            uvicorn.run(
                app,
                host=bind,
                port=settings.gateway.port,
                log_config=None,
                access_log=False,
                limit_concurrency=settings.gateway.max_concurrency,
                timeout_graceful_shutdown=30,
            )
        finally:
            for consumer in consumers:
                consumer.should_stop = True
            intake.close()


@contextmanager
def _gateway(config_file: str | None, url: str | None) -> Iterator[GatewayClient]:
    """A client of the configured gateway; its refusals and timeouts end the command in one
    line."""
    settings = cli_settings(config_file, gateway_url=url)
    key = settings.gateway.api_key
    with GatewayClient(settings.gateway.url, key.get_secret_value() if key else None) as client:
        try:
            yield client
        except (GatewayError, TimeoutError) as exc:
            raise click.ClickException(str(exc)) from None


def _show(job: dict[str, Any], as_json: bool) -> None:
    click.echo(json.dumps(job, ensure_ascii=False, indent=None if as_json else 2))


url_option = click.option("--url", help="The gateway (default RIVEG_GATEWAY_URL).")
json_option = click.option("--json", "as_json", is_flag=True, help="One-line JSON.")


@click.command()
@click.option("--text", required=True, help="The post's text.")
@click.option("--image", "image_path", type=EXISTING_FILE, help="The image file.")
@click.option("--image-url", help="Or: an image URL the gateway fetches.")
@click.option("--id", "post_id", help="Post id (default: a new one).")
@click.option("--callback-url", help="POSTed the job when it ends.")
@click.option("--wait/--no-wait", default=False, help="Wait for the job to end.")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait.")
@url_option
@json_option
@config_option
def submit(
    text: str,
    image_path: Path | None,
    image_url: str | None,
    post_id: str | None,
    callback_url: str | None,
    wait: bool,
    timeout: float,
    url: str | None,
    as_json: bool,
    config_file: str | None,
) -> None:
    """Submit a post to the gateway; prints its job (with --wait, when it ends)."""
    if (image_path is None) == (image_url is None):
        raise click.UsageError("give one of --image and --image-url")
    with _gateway(config_file, url) as client:
        job = client.submit(
            post_id or uuid.uuid4().hex,
            text,
            image_path,
            image_url=image_url,
            callback_url=callback_url,
        )
        if wait:
            job = client.wait(job["job_id"], timeout=timeout)
    _show(job, as_json)
    if job["status"] == "failed":
        raise SystemExit(1)


@click.command()
@click.argument("job_id")
@url_option
@json_option
@config_option
def status(job_id: str, url: str | None, as_json: bool, config_file: str | None) -> None:
    """A job's status (and its result when done)."""
    with _gateway(config_file, url) as client:
        _show(client.get(job_id), as_json)


@click.command()
@click.argument("job_id", required=False)
@click.option("--post", "post_id", help="The post id instead of a job id.")
@click.option("--wait/--no-wait", default=True, help="Wait for the job to end.")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait.")
@url_option
@json_option
@config_option
def result(
    job_id: str | None,
    post_id: str | None,
    wait: bool,
    timeout: float,
    url: str | None,
    as_json: bool,
    config_file: str | None,
) -> None:
    """The result of a job (or of a post id): exit 1 when the job failed."""
    if (job_id is None) == (post_id is None):
        raise click.UsageError("give a JOB_ID or --post ID")
    with _gateway(config_file, url) as client:
        job = client.get_post(post_id) if post_id else client.get(job_id or "")
        if wait:
            job = client.wait(job["job_id"], timeout=timeout)
    if job["status"] != "done":
        _show(job, as_json)
        raise SystemExit(1)
    _show(job["result"], as_json)
