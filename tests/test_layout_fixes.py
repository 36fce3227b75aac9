"""Regressions of the package reorganisation, each through the real entry point: `riveg serve`
with a model folder, the app `celery -A riveg.orchestration.celery_app` loads, `riveg worker`
configured by flags and a TOML file alone, and the declared retries of a failing stage call."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import grpc
import pytest
from celery.signals import task_failure, task_retry

from riveg.cli import LAZY_COMMANDS, main
from riveg.core.config import Settings, load_settings
from riveg.core.stages import STAGES
from riveg.core.storage import LocalObjectStore
from riveg.orchestration.celery_app import app, configure_app
from riveg.orchestration.jobs import MemoryJobStore
from riveg.orchestration.launcher import port_open
from riveg.orchestration.pipeline import submit_post
from riveg.orchestration.runtime import Runtime
from riveg.orchestration.tasks import TASKS, PostError
from riveg.serving.client import JOB_ID_KEY, StageInputError, TransientStageError
from riveg.serving.stages import connect
from riveg.v1 import common_pb2, mner_pb2, mner_pb2_grpc
from tests.support.processes import (
    console_script,
    delete_job_records,
    delete_queues,
    free_port,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MNER_WEIGHTS = ROOT / "services" / "mner" / "weights"
BROKER = os.environ.get("RIVEG_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
RESULTS = "redis://127.0.0.1:6379/9"  # a Redis db of this module's own
PREFIX = f"riveg-layout-{uuid.uuid4().hex[:8]}"  # this module's queues: <PREFIX>.<queue>
TEXT = "Astronaut Eileen Collins poses at NASA in Houston ."


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any RIVEG_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIVEG_")}
    env.update(extra)
    return env


def _tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


def _stop(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL (its whole session) if it does not exit in time."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _needs_broker() -> None:
    if not (port_open("127.0.0.1", 5672) and port_open("127.0.0.1", 6379)):
        pytest.skip(
            "RabbitMQ (127.0.0.1:5672) and Redis (127.0.0.1:6379) must run: .ci/run starts them"
        )


def _toml(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return str(v).lower()
        return repr(v) if isinstance(v, int) else f'"{v}"'

    lines = []
    for section, fields in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value(v)}" for key, v in fields.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


# --- a. RIVEG_MNER_MODEL naming a folder, through `riveg serve` ------------------------------


def test_serve_mner_with_the_shipped_weights_folder_as_model(tmp_path: Path) -> None:
    """`riveg serve mner` with RIVEG_MNER_MODEL=<the shipped weights folder> starts, serves the
    folder's crf model (not the builtin default) and recognises entities. It used to crash at
    start-up: AttributeError: 'PosixPath' object has no attribute 'strip'."""
    port = free_port()
    log = tmp_path / "serve-mner.log"
    env = _clean_env(
        RIVEG_MNER_MODEL=str(SHIPPED_MNER_WEIGHTS),
        RIVEG_MNER_ADDR=f"127.0.0.1:{port}",
        RIVEG_STORE_KIND="local",
        RIVEG_STORE_PATH=str(tmp_path / "store"),
    )
    with log.open("w") as out:
        process = subprocess.Popen(
            [console_script("riveg"), "serve", "mner"], env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    client = connect("mner", load_settings(mner_addr=f"127.0.0.1:{port}"))
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"riveg serve mner exited {process.returncode}:\n{_tail(log)}")
            try:
                client.wait_ready(timeout=1)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    pytest.fail(f"riveg serve mner not SERVING after 120 s:\n{_tail(log)}")
        current = client.admin.Current(common_pb2.CurrentModelRequest(), timeout=10)
        assert current.ready and current.model.startswith("crf-"), current
        assert current.backend == "crf"
        listed = client.admin.List(common_pb2.ListModelsRequest(), timeout=10)
        (row,) = [m for m in listed.models if m.current]
        assert row.model == current.model
        assert not row.builtin, "the model must come from the configured folder, not the default"
        reply = client.call("Recognize", mner_pb2.RecognizeRequest(text=TEXT))
        assert ("NASA", "ORG") in {(e.text, e.type) for e in reply.entities}
        assert reply.model == current.model
    finally:
        client.close()
        _stop(process)
    assert "AttributeError" not in _tail(log, 20000)


# --- b. the app `celery -A riveg.orchestration.celery_app` loads -------------------------------


def _celery_env(prefix: str) -> dict[str, str]:
    return _clean_env(
        RIVEG_BROKER_URL=BROKER,
        RIVEG_BROKER_RESULT_BACKEND=RESULTS,
        RIVEG_BROKER_QUEUE_PREFIX=prefix,
    )


def test_celery_a_loads_the_app_configured_from_riveg_env() -> None:
    """`celery -A riveg.orchestration.celery_app report` (prints the app's settings, connects to
    nothing) shows the broker, result backend and routes of RIVEG_*, JSON and events, no eager."""
    done = subprocess.run(
        [console_script("celery"), "-A", "riveg.orchestration.celery_app", "report"],
        env=_celery_env("testprefix"), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    report = done.stdout
    assert done.returncode == 0, done.stderr[-3000:]
    assert "broker_url: 'amqp://guest:********@127.0.0.1:5672//'" in report  # password masked
    assert "result_backend: 'redis://127.0.0.1:6379/9'" in report
    routes = dict(re.findall(r"'(riveg\.\w+)': \{'queue': '([\w.\-]+)'\}", report))
    assert routes == {
        "riveg.store": "testprefix.pipeline", "riveg.knowledge": "testprefix.llm",
        "riveg.mner": "testprefix.mner", "riveg.expand": "testprefix.llm",
        "riveg.ve": "testprefix.ve", "riveg.vg": "testprefix.vg", "riveg.seg": "testprefix.seg",
        "riveg.assemble": "testprefix.pipeline",
    }  # fmt: skip
    assert "task_default_queue: 'testprefix.pipeline'" in report
    assert "task_serializer: 'json'" in report and "accept_content: ['json']" in report
    assert "worker_send_task_events: True" in report
    assert "task_always_eager: True" not in report and "memory://" not in report


@pytest.mark.integration
def test_celery_a_inspect_reaches_the_configured_broker() -> None:
    """`celery -A riveg.orchestration.celery_app inspect ping` connects to RIVEG_BROKER_URL (a
    running RabbitMQ): it gets pongs or "No nodes replied", not a refused connection."""
    _needs_broker()
    command = [console_script("celery"), "-A", "riveg.orchestration.celery_app",
               "inspect", "ping", "--timeout", "2"]  # fmt: skip
    done = subprocess.run(
        command, env=_celery_env(PREFIX), capture_output=True, text=True, timeout=60
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0 or "No nodes replied" in output, output[-3000:]
    assert "Could not connect" not in output  # "No nodes replied" comes after connecting


# --- c. and d. `riveg worker` against the real broker ------------------------------------------


def _drop_celery_caches() -> None:
    """Forget what the app built from its previous configuration (connection and producer
    pools, routes and queues, result backend), so the next call uses the current one."""
    app._pool = None  # kombu keeps one pool per broker URL: the next use looks it up again
    app.__dict__.pop("amqp", None)
    app._backend_cache = None
    app._local = threading.local()


@contextmanager
def _celery_for(settings: Settings, restore: Settings) -> Iterator[None]:
    """This process's Celery app configured for ``settings``, then for ``restore`` again."""
    configure_app(settings)
    _drop_celery_caches()
    try:
        yield
    finally:
        configure_app(restore)
        _drop_celery_caches()


@pytest.fixture(scope="module")
def broker_queues() -> Iterator[str]:
    """This module's queue prefix; its queues are deleted at the end."""
    _needs_broker()
    yield PREFIX
    delete_queues(BROKER, PREFIX)
    delete_job_records(RESULTS, PREFIX)


@pytest.fixture
def no_riveg_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings of this process come from the test's TOML file and arguments alone."""
    for name in [n for n in os.environ if n.startswith("RIVEG_")]:
        monkeypatch.delenv(name)


def _spawn_worker(queues: list[str], config: Path, log: Path) -> subprocess.Popen:
    """`riveg worker QUEUES --broker BROKER --config CONFIG` with no RIVEG_* in its environment."""
    with log.open("w") as out:
        return subprocess.Popen(
            [console_script("riveg"), "worker", *queues, "--broker", BROKER, "--config",
             str(config), "--concurrency", "2"],
            env=_clean_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def _wait_ready(result: Any, worker: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not result.ready():
        if worker.poll() is not None:
            pytest.fail(f"the worker exited {worker.returncode}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            pytest.fail(f"no result after {timeout} s; worker log:\n{_tail(log)}")
        time.sleep(0.1)


def _forget(result: Any) -> None:
    """Delete a chain's results (every step's) from the result backend."""
    while result is not None:
        result.forget()
        result = result.parent


@pytest.mark.integration
def test_worker_with_broker_flag_and_toml_processes_a_post(
    embedded, embedded_settings: Settings, broker_queues: str, no_riveg_env, sample_bytes,
    tmp_path: Path,
) -> None:  # fmt: skip
    """`riveg worker pipeline llm mner ve vg seg --broker URL --config FILE`, with no RIVEG_* in
    its environment, takes the whole chain of a post from the broker, calls the stage servers
    the file names and writes the result under its post id to the file's local store."""
    store_path = embedded_settings.store.path  # the stage servers read images from this store
    config = _toml(tmp_path / "riveg.toml", {
        "broker": {"result_backend": RESULTS, "queue_prefix": broker_queues},
        "store": {"kind": "local", "path": str(store_path)},
        **{stage: {"addr": embedded.runtime.addrs[stage]} for stage in STAGES},
    })  # fmt: skip
    log = tmp_path / "worker.log"
    worker = _spawn_worker(["pipeline", *STAGES], config, log)
    settings = load_settings(config, broker_url=BROKER)
    assert (settings.broker.queue_prefix, settings.store.kind) == (broker_queues, "local")
    runtime = Runtime(settings, LocalObjectStore(store_path))
    try:
        with _celery_for(settings, restore=embedded_settings):
            submission = submit_post(runtime, TEXT, sample_bytes, "layout-c")
            try:
                _wait_ready(submission.result, worker, log, timeout=180)
                result = submission.get(timeout=10)
            finally:
                _forget(submission.task)
    finally:
        _stop(worker)
        runtime.close()
    assert result["id"] == "layout-c" and result["text"] == TEXT
    found = {(e["text"], e["type"]) for e in result["entities"]}
    assert ("NASA", "ORG") in found, found
    assert any(t.endswith("Eileen Collins") and k == "PER" for t, k in found), found
    assert set(result["models"]) == {"llm", "mner", "ve", "vg", "seg"}
    stored = LocalObjectStore(store_path)
    stored_result = stored.get_json("results/posts/layout-c.json")
    assert stored_result["job_id"] == submission.job_id
    assert stored_result["entities"] == result["entities"]


class _DownMner(mner_pb2_grpc.MnerServiceServicer):
    """An MNER server that answers every Recognize with UNAVAILABLE, noting when and for whom."""

    def __init__(self) -> None:
        self.attempts: list[tuple[float, str]] = []

    def Recognize(self, request, context):
        job_id = dict(context.invocation_metadata()).get(JOB_ID_KEY, "")
        self.attempts.append((time.monotonic(), job_id))
        context.abort(grpc.StatusCode.UNAVAILABLE, "fake mner is down")


@pytest.mark.integration
def test_worker_retries_an_unavailable_stage_with_backoff_then_fails_the_post(
    embedded_settings: Settings, broker_queues: str, no_riveg_env, tmp_path: Path
) -> None:
    """A real `riveg worker mner` with `[pipeline] max_retries = 3` and an MNER server that is
    always UNAVAILABLE: exactly 1 + 3 calls reach the server, each wait at most the jittered
    backoff (1, 2, 4 s) plus 2 s of overhead, the post fails within 15 s of its first call
    (7 s of backoff at most) with an error naming the mner stage and UNAVAILABLE."""
    down = _DownMner()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    mner_pb2_grpc.add_MnerServiceServicer_to_server(down, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    config = _toml(tmp_path / "riveg.toml", {
        "broker": {"result_backend": RESULTS, "queue_prefix": broker_queues},
        "pipeline": {"max_retries": 3},
        "store": {"kind": "local", "path": str(tmp_path / "store")},
        "mner": {"addr": f"127.0.0.1:{port}"},
    })  # fmt: skip
    log = tmp_path / "worker.log"
    worker = _spawn_worker(["mner"], config, log)
    settings = load_settings(config, broker_url=BROKER)
    job_id = uuid.uuid4().hex
    state = {"id": "layout-d", "job_id": job_id, "text": TEXT,
             "image": {"key": "images/none", "width": 512, "height": 512},
             "entities": [], "models": {}, "timings_ms": {}}  # fmt: skip
    try:
        with _celery_for(settings, restore=embedded_settings):
            result = TASKS["mner"].apply_async(args=[state])
            try:
                _wait_ready(result, worker, log, timeout=120)
                failed_at = time.monotonic()
                with pytest.raises(Exception) as error:
                    result.get(timeout=10)
                state_name = result.state
            finally:
                result.forget()
    finally:
        _stop(worker)
        server.stop(0)
    assert state_name == "FAILURE"
    message = str(error.value)
    assert "mner stage failed (UNAVAILABLE)" in message and "fake mner is down" in message
    times = [t for t, job in down.attempts if job == job_id]
    assert len(times) == 1 + 3 == len(down.attempts), _tail(log)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    print(
        f"attempt gaps {[round(g, 2) for g in gaps]} s; failed {failed_at - times[0]:.2f} s "
        "after the first"
    )
    for retry, gap in enumerate(gaps):
        assert 0 < gap <= 2**retry + 2.0, gaps  # full jitter: a wait in [0, 2**retry] s
    assert failed_at - times[0] < 15.0, gaps


# --- d'. the same retry rules in eager mode, fast --------------------------------------------


class _FailingClient:
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    def call(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        raise self.error


def _hand_made_state() -> dict[str, Any]:
    return {"id": "eager", "job_id": "job-eager", "text": TEXT,
            "image": {"key": "images/none", "width": 1, "height": 1},
            "entities": [], "models": {}, "timings_ms": {}}  # fmt: skip


def _runtime_with(
    monkeypatch: pytest.MonkeyPatch, client: _FailingClient, retries: int
) -> SimpleNamespace:
    settings = load_settings(pipeline_max_retries=retries, store_kind="local")
    fake = SimpleNamespace(settings=settings, store=None, client=lambda stage: client,
                           jobs=MemoryJobStore())  # fmt: skip
    monkeypatch.setattr("riveg.orchestration.runtime._runtime", fake)
    return fake


def test_transient_stage_errors_are_retried_max_retries_times(monkeypatch) -> None:
    """RIVEG_PIPELINE_MAX_RETRIES=2: a step whose stage stays UNAVAILABLE runs 1 + 2 times,
    then fails with the stage's error (eager retries skip the backoff wait)."""
    client = _FailingClient(
        TransientStageError("mner", grpc.StatusCode.UNAVAILABLE, "connection refused")
    )
    _runtime_with(monkeypatch, client, retries=2)
    retried, failed = [], []

    def on_retry(sender=None, reason=None, **_: Any) -> None:
        retried.append(reason)

    def on_failure(sender=None, exception=None, **_: Any) -> None:
        failed.append(exception)

    task_retry.connect(on_retry, sender=TASKS["mner"], weak=False)
    task_failure.connect(on_failure, sender=TASKS["mner"], weak=False)
    try:
        result = TASKS["mner"].apply(args=[_hand_made_state()])
    finally:
        task_retry.disconnect(on_retry, sender=TASKS["mner"])
        task_failure.disconnect(on_failure, sender=TASKS["mner"])
    assert client.calls == 1 + 2 and len(retried) == 2
    assert result.state == "FAILURE"
    assert [str(retry.exc) for retry in retried] == [str(client.error)] * 2
    (final,) = failed  # the error the task ended with: the stage's own
    assert isinstance(final, TransientStageError) and str(final) == str(client.error)
    with pytest.raises(Exception, match=r"mner stage failed \(UNAVAILABLE\): connection refused"):
        result.get()


def test_a_refused_request_fails_the_post_at_once(monkeypatch) -> None:
    """A stage refusing the request (INVALID_ARGUMENT) is never retried: one call, PostError."""
    client = _FailingClient(
        StageInputError("mner", grpc.StatusCode.INVALID_ARGUMENT, "the post text is empty")
    )
    fake = _runtime_with(monkeypatch, client, retries=5)
    with pytest.raises(PostError, match="the post text is empty"):
        TASKS["mner"].apply(args=[_hand_made_state()], throw=True)
    assert client.calls == 1
    record = fake.jobs.get("job-eager")  # the job ended here, failed with the reason
    assert record["status"] == "failed" and "the post text is empty" in record["error"]


def test_embedded_mode_retries_a_transient_stage_error(
    monkeypatch, embedded_settings: Settings, sample_bytes, tmp_path: Path
) -> None:
    """In embedded mode (eager chain) a transient stage error is retried max_retries times too,
    and the post then fails with the stage's error, not Celery's Retry."""
    from celery.exceptions import Retry

    client = _FailingClient(
        TransientStageError("mner", grpc.StatusCode.UNAVAILABLE, "connection refused")
    )
    settings = load_settings(
        pipeline_max_retries=2, store_kind="local", store_path=tmp_path / "store"
    )
    runtime = Runtime(settings, LocalObjectStore(tmp_path / "store"))
    monkeypatch.setattr(runtime, "client", lambda stage: client)
    monkeypatch.setattr("riveg.orchestration.runtime._runtime", runtime)
    configure_app(settings)
    try:
        with pytest.raises(Exception) as error:
            submit_post(runtime, TEXT, sample_bytes, "eager-retry").get()
    finally:
        configure_app(embedded_settings)
    assert not isinstance(error.value, Retry), repr(error.value)
    assert "mner stage failed (UNAVAILABLE)" in str(error.value)
    assert client.calls == 1 + 2


def test_stage_errors_come_back_from_the_result_backend_as_themselves() -> None:
    """A failed step's TransientStageError reaches the submitter as a TransientStageError with
    its stage, code and details (Celery JSON results and pickle both rebuild it from args)."""
    import pickle

    error = TransientStageError("mner", grpc.StatusCode.UNAVAILABLE, "fake mner is down")
    for rebuilt in (
        pickle.loads(pickle.dumps(error)),
        app.backend.exception_to_python(app.backend.prepare_exception(error, "json")),
    ):
        assert isinstance(rebuilt, TransientStageError), repr(rebuilt)
        assert (rebuilt.stage, rebuilt.code, rebuilt.details) == (
            "mner",
            grpc.StatusCode.UNAVAILABLE,
            "fake mner is down",
        )
        assert str(rebuilt) == "mner stage failed (UNAVAILABLE): fake mner is down"


@pytest.mark.parametrize("name", sorted(LAZY_COMMANDS))
def test_lazy_command_summaries_match_their_groups(name: str) -> None:
    """`riveg --help` shows the lazy groups' summaries from a table: it must say what the group's
    own help says."""
    group = main.get_command(click.Context(main), name)
    assert group is not None and group.name == name
    assert group.help.splitlines()[0] == LAZY_COMMANDS[name][1]


def test_pipeline_commands_do_not_import_the_stage_libraries() -> None:
    """`riveg --help` and `riveg worker ...` import no stage's model libraries (torch): six
    workers of `riveg up` stay light, and help is quick."""
    code = (
        "import sys; from click.testing import CliRunner; from riveg.cli import main; "
        "assert CliRunner().invoke(main, ['--help']).exit_code == 0; "
        "assert CliRunner().invoke(main, ['worker', '--help']).exit_code == 0; "
        "print(sorted(m for m in ('torch', 'transformers', 'mediapipe') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"
