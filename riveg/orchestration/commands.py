"""Pipeline commands: analyze, batch (embedded or submitted to a broker), serve, worker, up."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from riveg.core.cli import cli_settings, config_option
from riveg.core.config import LimitsSettings, Settings
from riveg.core.errors import InvalidInput
from riveg.core.images import check_image, decode_image
from riveg.core.limits import check_image_bytes, check_text
from riveg.core.logging import get_logger
from riveg.core.observability import flush_tracing, setup_tracing, start_metrics_server
from riveg.core.stages import QUEUES, STAGES
from riveg.core.storage import open_store
from riveg.orchestration.celery_app import configure_app, queue_name, worker_config
from riveg.orchestration.jobs import ACTIVE
from riveg.orchestration.overlay import render_overlay
from riveg.orchestration.pipeline import (
    JobFailed,
    JobResult,
    stored_result,
    submit_patiently,
    submit_post,
)
from riveg.orchestration.runtime import EmbeddedCluster, Runtime, set_runtime
from riveg.orchestration.tasks import PostError
from riveg.serving.client import StageCallError
from riveg.serving.server import StageServer
from riveg.serving.stages import build_stage

log = get_logger("riveg.cli")
knowledge_option = click.option(
    "--knowledge/--no-knowledge", default=None, help="Run the LLM knowledge step."
)
metrics_port_option = click.option(
    "--metrics-port",
    type=int,
    help="Serve Prometheus metrics at :PORT/metrics (default RIVEG_METRICS_PORT; unset: none).",
)
broker_option = click.option(
    "--broker",
    "broker_url",
    help="Celery broker URL: submit to a running distributed pipeline instead of embedded mode.",
)


def submission_options(timeout_help: str, json_help: str) -> Callable[[Any], Any]:
    """The options of the commands that submit posts: --knowledge, --timeout, --json, --broker
    and --config (in that order in --help)."""
    options = (
        knowledge_option,
        click.option("--timeout", default=600.0, show_default=True, help=timeout_help),
        click.option("--json", "as_json", is_flag=True, help=json_help),
        broker_option,
        config_option,
    )

    def decorate(command: Any) -> Any:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


@contextmanager
def pipeline_runtime(settings: Settings) -> Iterator[Any]:
    """The runtime posts are submitted through: an in-process cluster (embedded) or a broker."""
    configure_app(settings)
    if settings.embedded:
        cluster = EmbeddedCluster(settings)
        try:
            runtime = cluster.start()
            set_runtime(runtime)
            log.info("embedded pipeline ready", load_s=cluster.load_seconds)
            yield runtime
        finally:
            cluster.stop()
            set_runtime(None)
            flush_tracing()
    else:
        runtime = Runtime(settings, open_store(settings))
        try:
            yield runtime
        finally:
            runtime.close()
            flush_tracing()


def _print_result(result: dict[str, Any], as_json: bool) -> None:
    click.echo(json.dumps(result, ensure_ascii=False, indent=None if as_json else 2))


def write_overlay(
    result: dict[str, Any], image_bytes: bytes, out_dir: Path, limits: LimitsSettings | None = None
) -> Path:
    """Write <id>.json and <id>.png (the overlay) into out_dir; return the PNG's path."""
    limits = limits or LimitsSettings()
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(result["id"]))
    (out_dir / f"{stem}.json").write_text(json.dumps(result, ensure_ascii=False, indent=2))
    png = out_dir / f"{stem}.png"
    image = decode_image(
        image_bytes, max_bytes=limits.max_image_bytes, max_pixels=limits.max_image_pixels
    )
    render_overlay(image, result).save(png)
    return png


def read_image_file(path: Path, limits: LimitsSettings) -> bytes:
    """The bytes of an image file, refused (InvalidInput) before it is read when over the byte
    limit, and after when its header is not an image or names too many pixels."""
    check_image_bytes(path.stat().st_size, limits.max_image_bytes)
    data = path.read_bytes()
    check_image(data, max_bytes=limits.max_image_bytes, max_pixels=limits.max_image_pixels)
    return data


def image_path(images_dir: Path, value: object) -> Path:
    """The file a post's ``image`` names under ``images_dir`` (already resolved); InvalidInput
    for a missing or non-string value, an absolute path, a path with ``..``, a path that leads
    outside the folder (through a symbolic link), or no such file."""
    if value is None:
        raise InvalidInput("the post has no 'image' (a path relative to --images)")
    if not isinstance(value, str):
        raise InvalidInput(
            f"the post's 'image' must be a path relative to --images, not {type(value).__name__}"
        )
    if not value.strip():
        raise InvalidInput("the post's 'image' is empty (give a path relative to --images)")
    if "\0" in value:
        raise InvalidInput(f"image path {value!r} contains a NUL character")
    relative = Path(value)
    if relative.is_absolute():
        raise InvalidInput(f"image path {value!r} is absolute; give a path relative to --images")
    if ".." in relative.parts:
        raise InvalidInput(f"image path {value!r} contains '..'; it must stay under --images")
    target = (images_dir / relative).resolve()
    if not target.is_relative_to(images_dir):
        raise InvalidInput(f"image path {value!r} leads outside --images (to {target})")
    if not target.exists():
        raise InvalidInput(f"image {value!r} not found under --images")
    if not target.is_file():
        raise InvalidInput(f"image path {value!r} is not a file")
    return target


@click.command()
@click.option("--text", required=True, help="The post's text.")
@click.option("--image", "image_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--id", "post_id", help="Post id (default: a new job id).")
@click.option(
    "--image-id", help="Benchmark image id: the knowledge step uses its released caption."
)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Write JSON + overlay.")
@submission_options("Seconds to wait (broker).", "One-line JSON result.")
def analyze(
    text: str,
    image_path: str,
    post_id: str | None,
    image_id: str | None,
    out_dir: str | None,
    knowledge: bool | None,
    timeout: float,
    as_json: bool,
    broker_url: str | None,
    config_file: str | None,
) -> None:
    """Find, type, ground and segment the named entities of one post."""
    settings = cli_settings(config_file, broker_url=broker_url)
    setup_tracing(settings, "riveg-analyze")
    limits = settings.limits
    try:  # refused before any model is loaded or anything is uploaded
        check_text(text, limits.max_text_chars)
        image_bytes = read_image_file(Path(image_path), limits)
        # Decoded once here too (bounded by the limits): a damaged file fails before loading.
        decode_image(image_bytes, max_bytes=limits.max_image_bytes,
                     max_pixels=limits.max_image_pixels).close()  # fmt: skip
    except InvalidInput as exc:
        raise click.ClickException(str(exc)) from None
    started = time.perf_counter()
    with pipeline_runtime(settings) as runtime:
        try:
            submission = submit_patiently(runtime, text, image_bytes, post_id, knowledge, image_id)
            result = submission.get(timeout)
        except (PostError, InvalidInput, StageCallError) as exc:
            raise click.ClickException(str(exc)) from exc
        except Exception as exc:  # the store, the broker, the result backend: one line
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
    log.info("analyzed", wall_s=round(time.perf_counter() - started, 2))
    if out_dir:
        png = write_overlay(result, image_bytes, Path(out_dir), settings.limits)
        click.echo(f"overlay written to {png}", err=True)
    _print_result(result, as_json)


BatchEntry = tuple[int, dict[str, Any] | None, str | None]


def read_batch_lines(lines: Iterable[bytes]) -> Iterator[BatchEntry]:
    """(line number, post or None, error or None) for each non-empty line of JSONL bytes: a
    line that is not UTF-8, not JSON or not a post is that line's error, the others go on."""
    for number, raw in enumerate(lines, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            where = f"byte 0x{raw[exc.start]:02x} at column {exc.start + 1}"
            yield number, None, f"line {number}: not UTF-8 ({where})"
            continue
        if number == 1:
            line = line.removeprefix("\ufeff")  # a byte-order mark
        if not line.strip():
            continue
        try:
            post = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, None, f"line {number}: not JSON ({exc.msg})"
            continue
        except RecursionError:
            yield number, None, f"line {number}: not JSON (nested too deeply)"
            continue
        if not isinstance(post, dict):
            kind = type(post).__name__
            yield (
                number,
                None,
                f"line {number}: expected an object with 'text' and 'image' (got {kind})",
            )
            continue
        if "text" not in post:
            yield number, None, f"line {number}: the post has no 'text'"
            continue
        if not isinstance(post["text"], str):
            kind = type(post["text"]).__name__
            yield number, None, f"line {number}: 'text' must be a string (got {kind})"
            continue
        post.setdefault("id", f"line-{number}")
        post["id"] = str(post["id"])
        try:
            post["id"].encode("utf-8")
        except UnicodeEncodeError:
            yield number, None, f"line {number}: the 'id' is not valid Unicode (a lone surrogate)"
            continue
        yield number, post, None


def _read_batch(path: Path) -> Iterator[BatchEntry]:
    """:func:`read_batch_lines` of a JSONL file, read as bytes."""
    with path.open("rb") as handle:
        yield from read_batch_lines(handle)


def _done_ids(out_path: Path) -> set[str]:
    """Ids already finished in OUT; earlier failures are dropped so they are tried again."""
    if not out_path.exists():
        return set()
    kept, done = [], set()
    for line in out_path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut off by an interruption
        if "error" not in record:
            kept.append(line)
            done.add(str(record["id"]))
    tmp = out_path.with_suffix(out_path.suffix + ".tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
    tmp.replace(out_path)
    return done


@click.command()
@click.argument("input_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--images",
    "images_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder the posts' 'image' paths are relative to.",
)
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Result JSONL (appended; finished posts are skipped on a re-run).",
)
@click.option(
    "--window", default=16, show_default=True, help="Posts in flight (embedded: run at once)."
)
@submission_options("Seconds to wait for a post.", "Summary as one JSON line.")
def batch(
    input_path: Path,
    images_dir: Path,
    out_path: Path,
    window: int,
    knowledge: bool | None,
    timeout: float,
    as_json: bool,
    broker_url: str | None,
    config_file: str | None,
) -> None:
    """Analyze every post of INPUT_PATH (JSONL: {"id", "text", "image"}, optionally "image_id"
    for a released caption), resuming where it stopped. A post that fails gets {"id", "error"}
    in OUT; the others go on."""
    settings = cli_settings(config_file, broker_url=broker_url)
    setup_tracing(settings, "riveg-batch")
    done = _done_ids(out_path)
    entries = _without_duplicates(_read_batch(input_path))
    todo = [e for e in entries if e[1] is None or e[1]["id"] not in done]
    counts = {"done": 0, "failed": 0, "skipped": len(entries) - len(todo), "from_store": 0}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with (
        pipeline_runtime(settings) as runtime,
        # backslashreplace: an error naming a character that is not UTF-8 still writes, as JSON
        out_path.open("a", encoding="utf-8", errors="backslashreplace") as out,
        tqdm(total=len(todo), desc="posts", unit="post", file=sys.stderr) as bar,
    ):
        started = time.perf_counter()  # models are loaded: time the posts alone

        def record(entry: dict[str, Any], from_store: bool = False) -> None:
            counts["failed" if "error" in entry else "done"] += 1
            counts["from_store"] += from_store
            out.write(json.dumps(entry, ensure_ascii=False) + "\n")
            out.flush()
            bar.update(1)

        counts["reattached"] = _run_batch(
            runtime, todo, images_dir, window, knowledge, timeout, record
        )
        elapsed = time.perf_counter() - started
    summary = {**counts, "seconds": round(elapsed, 2),
               "posts_per_s": round((counts["done"] + counts["failed"]) / max(elapsed, 1e-9), 3),
               "out": str(out_path)}  # fmt: skip
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(
            f"{counts['done']} done, {counts['failed']} failed, {counts['skipped']} "
            f"skipped in {elapsed:.1f}s ({summary['posts_per_s']} posts/s) -> {out_path}"
        )
    if counts["failed"]:
        sys.exit(1)


def _without_duplicates(entries: Iterable[BatchEntry]) -> list[BatchEntry]:
    """The entries, an id seen on an earlier line replaced by that line's error: each post is
    processed once, and each repetition reported once."""
    first_line: dict[str, int] = {}
    kept: list[BatchEntry] = []
    for number, post, error in entries:
        if post is not None and post["id"] in first_line:
            kept.append(
                (
                    number,
                    None,
                    f"line {number}: the id {post['id']!r} is on line "
                    f"{first_line[post['id']]} already; not processed twice",
                )
            )
            continue
        if post is not None:
            first_line[post["id"]] = number
        kept.append((number, post, error))
    return kept


def _run_batch(
    runtime: Any,
    todo: list[BatchEntry],
    images_dir: Path,
    window: int,
    knowledge: bool | None,
    timeout: float,
    record: Callable[..., None],
) -> int:
    """Submit posts (keeping at most ``window`` in flight) and record each outcome; each post is
    validated (text, image path, image bytes and header) before anything of it is uploaded.
    With a broker, a post whose result is stored is taken from the store, and a post whose job
    (from an earlier run) is still queued or running is waited for, not submitted again.
    Returns how many were re-attached so.

    In embedded mode each post's chain runs in a thread of its own (``window`` at once), so
    that posts overlap and the stage servers' batchers have concurrent calls to batch."""
    limits = runtime.settings.limits
    root = images_dir.resolve()
    in_flight: list[tuple[str, Any, float]] = []
    reattached = 0
    threads = (
        ThreadPoolExecutor(window, thread_name_prefix="post") if runtime.settings.embedded else None
    )

    def collect(block: bool) -> None:
        while in_flight:
            for index, (post_id, outcome, since) in enumerate(in_flight):
                if outcome.ready() or time.monotonic() - since > timeout:
                    in_flight.pop(index)
                    record(_outcome(post_id, outcome))
                    break
            else:
                if not block and len(in_flight) < window:
                    return
                time.sleep(0.02)

    try:
        for number, post, error in todo:
            if post is None:
                record({"id": f"line-{number}", "error": error})
                continue
            stored = _stored_result(runtime, post["id"])
            if stored is not None:  # finished by the workers before (this client was down)
                record(stored, from_store=True)
                continue
            running = _job_in_flight(runtime, post["id"])
            if running is not None:  # submitted by an earlier run and not ended: wait for it
                reattached += 1
                in_flight.append((post["id"], running, time.monotonic()))
                collect(block=False)
                continue
            try:
                check_text(post["text"], limits.max_text_chars)
                image_bytes = read_image_file(image_path(root, post.get("image")), limits)
                args = (runtime, post["text"], image_bytes, post["id"], knowledge,
                        post.get("image_id"))  # fmt: skip
                if threads is not None:
                    outcome: Any = _InThread(threads.submit(submit_post, *args))
                else:  # an outage of the store, the records or the broker is waited out
                    outcome = submit_patiently(*args).result
            except Exception as exc:  # a bad post must not stop the batch
                record({"id": post["id"], "error": f"{type(exc).__name__}: {exc}"})
                continue
            in_flight.append((post["id"], outcome, time.monotonic()))
            collect(block=False)
        collect(block=True)
    finally:
        if threads is not None:
            threads.shutdown(wait=False, cancel_futures=True)
    return reattached


class _InThread:
    """An embedded post whose chain runs in a thread: ready once it has run."""

    def __init__(self, future: Future) -> None:
        self.future = future

    def ready(self) -> bool:
        return self.future.done()

    def get(self, timeout: float | None = None) -> dict[str, Any]:
        return self.future.result(timeout).result.get(timeout=timeout)


def _stored_result(runtime: Any, post_id: str) -> dict[str, Any] | None:
    """With a broker: the post's result if the workers stored one already, else None."""
    if runtime.settings.embedded:
        return None
    try:
        return stored_result(runtime.store, post_id)
    except Exception:  # the store cannot say: process the post
        return None


def _job_in_flight(runtime: Any, post_id: str) -> JobResult | None:
    """With a broker: the post's latest job if it is still queued or running, else None."""
    if runtime.settings.embedded:
        return None
    try:
        record = runtime.jobs.find(post_id)
    except Exception:  # the job records cannot say: submit the post
        return None
    if record is None or record.get("status") not in ACTIVE:
        return None
    return JobResult(runtime, post_id, record["job_id"])


def _outcome(post_id: str, outcome: Any) -> dict[str, Any]:
    """The finished (or timed-out) post's result, or its error record."""
    try:
        return outcome.get(timeout=1.0)  # ready, or past --timeout: then it fails at once
    except JobFailed as exc:  # the job record's error names the step
        return {"id": post_id, "error": str(exc)}
    except Exception as exc:
        return {"id": post_id, "error": f"{type(exc).__name__}: {exc}"}


@click.command()
@click.argument("stage", type=click.Choice(STAGES))
@click.option("--port", type=int, help="Port to bind (default: RIVEG_GRPC_PORT or the stage's).")
@click.option(
    "--host",
    help="Address to bind (default: RIVEG_GRPC_HOST, 127.0.0.1; 0.0.0.0 to serve other machines).",
)
@metrics_port_option
@config_option
def serve(
    stage: str, port: int | None, host: str | None, metrics_port: int | None,
    config_file: str | None,
) -> None:  # fmt: skip
    """Run one stage's gRPC server until SIGTERM (TLS and mTLS as [grpc] configures)."""
    settings = cli_settings(config_file, grpc_host=host)
    setup_tracing(settings, f"riveg-serve-{stage}")
    start_metrics_server(settings, metrics_port)
    server = StageServer(build_stage(stage, settings, open_store(settings)), settings)
    server.start(port=port)
    try:
        server.serve_forever()
    finally:
        flush_tracing()


@click.command()
@click.argument("queues", nargs=-1, required=True, type=click.Choice(QUEUES))
@click.option(
    "--concurrency",
    default=16,
    show_default=True,
    help="Worker threads (they wait on stage servers, which batch the calls that meet).",
)
@metrics_port_option
@broker_option
@config_option
def worker(
    queues: tuple[str, ...], concurrency: int, metrics_port: int | None, broker_url: str | None,
    config_file: str | None,
) -> None:  # fmt: skip
    """Run a Celery worker consuming the given stage queues (<queue_prefix>.<queue>)."""
    settings = cli_settings(config_file, broker_url=broker_url)
    if settings.embedded:
        raise click.ClickException("a worker needs a broker: set RIVEG_BROKER_URL or --broker")
    setup_tracing(settings, f"riveg-worker-{'+'.join(queues)}")
    # The thread pool runs every task in this process: one registry, no multiprocess mode.
    start_metrics_server(settings, metrics_port)
    app = configure_app(settings)
    app.conf.update(worker_config())
    # The tasks of this worker reach the store and the stage servers these settings name.
    set_runtime(Runtime(settings, open_store(settings), patient=True))
    names = ",".join(queue_name(settings, q) for q in queues)
    node = f"{settings.broker.queue_prefix}-{'+'.join(queues)}@%h"
    app.worker_main([
        "worker", "-Q", names, "-n", node, "--pool", "threads",
        "-c", str(concurrency), "--loglevel", settings.log.level, "--without-gossip",
        "--without-mingle",
    ])  # fmt: skip
