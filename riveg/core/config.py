"""Configuration, grouped by concern: environment variables, a TOML file, or explicit values.

Every field is ``RIVEG_<SECTION>_<FIELD>`` in the environment (e.g. ``RIVEG_BROKER_URL``,
``RIVEG_VG_MODEL``, ``RIVEG_S3_SECRET_KEY``) and ``[section] field = ...`` in the TOML file that
``RIVEG_CONFIG`` or ``--config`` names. Precedence, highest first: explicit values (command-line
flags, :func:`load_settings` keywords), the environment, the TOML file, the defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from riveg.core import limits
from riveg.core.logging import get_logger
from riveg.core.stages import STAGE_TABLE, get_stage

log = get_logger("riveg.config")


def _empty_is_unset(value: Any) -> Any:
    # An empty value (``RIVEG_MNER_MODEL=``, as a ConfigMap may set it) is unset: no broker, the
    # shipped model, the object store's ``models/``; never the working folder.
    return None if value == "" else value


T = TypeVar("T")
Unset = Annotated[T | None, BeforeValidator(_empty_is_unset)]
"""An optional setting whose empty value means unset."""


def default_cache_dir() -> Path:
    """Where converted model weights and the local object store live by default."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "riveg"


class Section(BaseModel):
    """A settings section: an unknown key (a typo, a renamed setting) is an error, not ignored."""

    model_config = ConfigDict(extra="forbid")


class BrokerSettings(Section):
    """Celery's broker and result backend."""

    url: Unset[SecretStr] = Field(
        None,
        description="Celery broker URL (a Secret in k8s: it holds the password); unset = "
        "embedded mode",
    )
    result_backend: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"), description="Celery result backend URL"
    )

    queue_prefix: str = Field("riveg", description="Celery queues are `<prefix>.<stage>`")


RETRY_BACKOFF_MAX_S = 30.0
"""Longest wait between two tries of a pipeline step."""


class PipelineSettings(Section):
    """The per-post chain: which steps run, how long one may take, how failures are retried."""

    knowledge: bool = Field(False, description="run the LLM knowledge step before MNER")
    task_time_limit_s: int = Field(
        600,
        gt=0,
        description="time limit of one step: its stage calls share it as their gRPC deadline "
        "(the thread pool cannot kill a task), and a step past it fails the post",
    )
    retry_for_s: float = Field(
        300.0,
        gt=0,
        description="how long a step whose stage or store is unavailable keeps being retried "
        "(backoff 1, 2, 4 ... s, capped at 30 s, jittered)",
    )
    max_retries: int | None = Field(
        None, description="retries of such a step; unset: as many as `retry_for_s` allows"
    )
    max_starts: int = Field(
        3,
        gt=0,
        description="starts of one try of a step (its worker died each time: out of memory, "
        "killed) after which the post is poison: failed and kept on `<queue_prefix>.dead`",
    )

    @property
    def retries(self) -> int:
        """``max_retries``, else the retries whose backoff (1, 2, 4 ... capped at 30 s) adds
        up to ``retry_for_s``."""
        if self.max_retries is not None:
            return self.max_retries
        waited, count = 0.0, 0
        while waited < self.retry_for_s:
            waited += min(2.0**count, RETRY_BACKOFF_MAX_S)
            count += 1
        return count


class LimitsSettings(Section):
    """Bounds on what a post may hold, checked where it enters and again in every server."""

    max_image_bytes: int = Field(
        limits.MAX_IMAGE_BYTES, gt=0, description="largest image file, in bytes (20 MiB)"
    )
    max_image_pixels: int = Field(
        limits.MAX_IMAGE_PIXELS,
        gt=0,
        description="most pixels of an image (width x height, read from its header before "
        "decoding)",
    )
    max_text_chars: int = Field(
        limits.MAX_TEXT_CHARS, gt=0, description="longest post text, in characters"
    )
    max_entities: int = Field(
        limits.MAX_ENTITIES, gt=0, description="most entities (or boxes) of one stage call"
    )


class StoreSettings(Section):
    """Where images, masks and results live."""

    kind: Literal["local", "s3"] | None = Field(
        None, description="object store kind; default: s3 with a broker, else local"
    )
    path: Path = Field(
        default_factory=lambda: default_cache_dir() / "store",
        description="folder of the local store (default: <cache>/store)",
    )


class S3Settings(Section):
    """The S3/MinIO bucket of the `s3` store."""

    endpoint: str = Field("127.0.0.1:9000", description="S3/MinIO host:port")
    access_key: SecretStr = Field(
        SecretStr("minioadmin"), description="S3 access key (a Secret in k8s)"
    )
    secret_key: SecretStr = Field(
        SecretStr("minioadmin"), description="S3 secret key (a Secret in k8s)"
    )
    bucket: str = Field("riveg", description="bucket holding images, masks and results")
    secure: bool = Field(False, description="use HTTPS to reach S3")


class GrpcSettings(Section):
    """The stage servers' transport, on both ends."""

    port: int | None = Field(None, description="server port override (default: the addr's)")
    workers: int = Field(
        16, description="threads serving RPCs per server (the most calls one batch can hold)"
    )
    max_message_mb: int = Field(32, description="largest gRPC message, both directions")
    timeout_s: float = Field(120.0, description="deadline of each stage call")
    shutdown_grace_s: float = Field(10.0, description="time in-flight calls get on SIGTERM")
    host: str = Field(
        "127.0.0.1",
        description="address the stage servers bind: loopback by default (one machine); "
        "`0.0.0.0` in a cluster",
    )
    tls: bool = Field(False, description="TLS on every stage server and client")
    tls_cert: Unset[Path] = Field(None, description="server certificate chain (PEM), with `tls`")
    tls_key: Unset[Path] = Field(None, description="server private key (PEM), with `tls`")
    tls_ca: Unset[Path] = Field(
        None,
        description="CA (PEM) clients verify servers with, and servers verify client "
        "certificates with under `mtls`; unset: the system's roots",
    )
    tls_server_name: str = Field(
        "", description="name expected in the server's certificate (default: the address' host)"
    )
    mtls: bool = Field(False, description="servers require a client certificate signed by `tls_ca`")
    tls_client_cert: Unset[Path] = Field(
        None, description="client certificate chain (PEM) presented under `mtls`"
    )
    tls_client_key: Unset[Path] = Field(None, description="client private key (PEM), `mtls`")
    admin_token: Unset[SecretStr] = Field(
        None,
        description="bearer token ModelAdmin Load/Rollback require (a Secret in k8s); unset: "
        "only loopback callers or `admin_clients` may swap models",
    )
    admin_clients: str = Field(
        "",
        description="client-certificate common names allowed Load/Rollback under `mtls` "
        "(comma-separated)",
    )

    @property
    def admin_names(self) -> frozenset[str]:
        """The common names of ``admin_clients``."""
        return frozenset(name.strip() for name in self.admin_clients.split(",") if name.strip())

    @model_validator(mode="after")
    def _mtls_needs_tls(self) -> GrpcSettings:
        if self.mtls and not self.tls:
            raise ValueError("mtls needs tls: set RIVEG_GRPC_TLS=true as well")
        return self


class GatewaySettings(Section):
    """The HTTP API (`riveg gateway`) posts are submitted through, and its job records."""

    host: str = Field("127.0.0.1", description="address `riveg gateway` binds")
    port: int = Field(8080, description="port `riveg gateway` binds")
    api_keys_file: Unset[Path] = Field(
        None,
        description="file of accepted API keys, one `sha256:<hex digest of the key>` per line "
        "(a Secret in k8s); unset: no keys, and the gateway binds loopback only",
    )
    max_backlog: int = Field(
        1000, gt=0, description="jobs queued or running above which new posts get 429"
    )
    max_batch: int = Field(100, gt=0, description="most posts in one `POST /v1/posts:batch`")
    max_body_bytes: int = Field(
        32 * 1024 * 1024,
        gt=0,
        description="largest request body, in bytes (413 above; base64 makes images 4/3 larger)",
    )
    workers: int = Field(2, gt=0, description="posts run at once in embedded mode (no broker)")
    max_concurrency: int = Field(
        32, gt=0, description="requests handled at once; more get 503 (bounds memory: bodies)"
    )
    url_hosts: str = Field(
        "",
        description="hosts `image_url` and `callback_url` may name (comma-separated, "
        "`*.example.com` allowed); empty: any host whose addresses are all public",
    )
    url_timeout_s: float = Field(10.0, gt=0, description="timeout of an image download")
    callback_secret: Unset[SecretStr] = Field(
        None,
        description="HMAC-SHA256 key signing callbacks (`X-Riveg-Signature`); unset: unsigned",
    )
    callback_attempts: int = Field(
        6, gt=0, description="tries of a callback (backoff 1, 2, 4 s...)"
    )
    jobs_ttl_s: int = Field(7 * 86400, gt=0, description="how long job records are kept")
    url: str = Field(
        "http://127.0.0.1:8080",
        description="where `riveg submit/status/result` reach the gateway",
    )
    api_key: Unset[SecretStr] = Field(
        None, description="the key `riveg submit/status/result` send (`Authorization: Bearer`)"
    )

    @property
    def allowed_hosts(self) -> tuple[str, ...]:
        """The entries of ``url_hosts``, lower case."""
        return tuple(h.strip().lower() for h in self.url_hosts.split(",") if h.strip())


class MetricsSettings(Section):
    """Prometheus metrics of each process, served as text at ``/metrics``."""

    port: int | None = Field(
        None,
        description="port of this process' metrics server (`--metrics-port`); unset: none "
        "(the gateway serves /metrics on its own port)",
    )
    host: str = Field("127.0.0.1", description="address the metrics server binds; `0.0.0.0` "
                      "in a cluster")  # fmt: skip


class TracingSettings(Section):
    """OpenTelemetry traces: one per post, across every task and stage call."""

    exporter: Literal["none", "console", "otlp"] = Field(
        "none", description="where spans go: none (off, no cost), console (stderr), otlp"
    )
    endpoint: str = Field(
        "http://127.0.0.1:4318/v1/traces", description="OTLP/HTTP traces endpoint, `otlp`"
    )
    sample_ratio: float = Field(1.0, ge=0, le=1, description="share of posts traced")


class ModelsSettings(Section):
    """Where model versions come from and how they run on this machine."""

    store_path: Unset[Path] = Field(
        None,
        description="local folder of `<stage>/<name>/<version>/` models; unset: `models/` in "
        "the object store",
    )
    cache_dir: Path = Field(
        default_factory=default_cache_dir, description="converted weights (default ~/.cache/riveg)"
    )
    torch_threads: int = Field(0, description="torch CPU threads; 0 = torch's default")


class LogSettings(Section):
    """Log lines (always on stderr)."""

    format: Literal["json", "console"] = Field("console", description="log lines on stderr")
    level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")


class StageSettings(Section):
    """What every stage has: where its server is, and the model it serves."""

    addr: str = Field("", description="its server's host:port (default: 127.0.0.1:<its port>)")
    backend: str = Field("", description="backend key (see the stage's table)")
    model: Unset[str] = Field(
        None,
        description="model to serve: `name@version` (model store or builtin) or a model folder; "
        "unset: the backend's own",
    )
    max_batch_size: int = Field(
        16,
        gt=0,
        description="calls its server's dynamic batcher hands the model at once (1: no batching; "
        "a model version's manifest `batching` overrides)",
    )
    max_queue_delay_ms: float = Field(
        5.0,
        ge=0,
        description="how long the first call of a batch waits for others to join it",
    )
    model_instances: int = Field(
        2,
        gt=0,
        description="batches its server runs at once (Triton's instance count): a backend "
        "that loops over a batch on one core (GrabCut) uses as many cores",
    )


class LlmSettings(StageSettings):
    """The LLM stage: backend per job type, the OpenAI-compatible endpoint, prompts, cache."""

    model_instances: int = Field(
        1, gt=0, description="batches its server runs at once (one generation uses every core)"
    )

    knowledge_backend: str | None = Field(
        None, description="LLM backend of knowledge jobs (default: RIVEG_LLM_BACKEND)"
    )
    expand_backend: str | None = Field(
        None, description="LLM backend of expansion jobs (default: RIVEG_LLM_BACKEND)"
    )
    max_new_tokens: int = Field(24, description="cap of one entity expansion, in tokens")
    knowledge_max_new_tokens: int = Field(96, description="cap of one knowledge paragraph")
    api_base: str = Field(
        "http://127.0.0.1:8000/v1", description="OpenAI-compatible endpoint of the `openai` backend"
    )
    api_model: str = Field("", description="model name sent to the endpoint (required)")
    api_mode: Literal["chat", "completions"] = Field(
        "completions", description="endpoint flavour: /completions or /chat/completions"
    )
    api_key: SecretStr | None = Field(
        None, description="bearer key of the endpoint (a Secret in k8s); unset = none sent"
    )
    api_timeout_s: float = Field(60.0, description="timeout of one HTTP request")
    api_retries: int = Field(4, description="retries on 429, 5xx and timeouts (backoff)")
    api_concurrency: int = Field(4, description="most requests in flight to the endpoint")
    vision_model: str | None = Field(
        None, description="vision model on the endpoint for Describe; unset = captions/detector"
    )
    examples: int = Field(5, description="similar annotated examples in a knowledge prompt")
    examples_pool: str = Field(
        "twitter2017,twitter2015", description="datasets whose manual annotations are examples"
    )
    cache: bool = Field(True, description="cache generations in the object store")


class MnerSettings(StageSettings):
    """The MNER stage."""

    model_instances: int = Field(
        1, gt=0, description="batches its server runs at once (one forward uses every core)"
    )

    quantize: bool = Field(False, description="crf: dynamic int8 encoder (faster, -0.6 to -1.1 F1)")


class Settings(BaseSettings):
    """All knobs of RiVEG-serve, one section per concern; see the README's configuration table."""

    model_config = SettingsConfigDict(
        env_prefix="RIVEG_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="forbid",
    )

    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    s3: S3Settings = Field(default_factory=S3Settings)
    grpc: GrpcSettings = Field(default_factory=GrpcSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    llm: LlmSettings = Field(default_factory=LlmSettings)
    mner: MnerSettings = Field(default_factory=MnerSettings)
    ve: StageSettings = Field(default_factory=StageSettings)
    vg: StageSettings = Field(default_factory=StageSettings)
    seg: StageSettings = Field(default_factory=StageSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Explicit values, then the environment, then the TOML file (when one is named)."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = _toml_file.get() or os.environ.get("RIVEG_CONFIG") or None
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @model_validator(mode="after")
    def _defaults(self) -> Settings:
        """Each stage section's unset address and backend come from the stage's declaration;
        with a broker the store defaults to S3."""
        for stage in STAGE_TABLE.values():
            section: StageSettings = getattr(self, stage.name)
            section.addr = section.addr or stage.default_addr
            section.backend = section.backend or stage.backend
        if self.store.kind is None:
            self.store.kind = "local" if self.embedded else "s3"
        return self

    def stage(self, name: str) -> StageSettings:
        """The configuration section of a stage; ValueError for an unknown stage."""
        return getattr(self, get_stage(name).name)

    def server_port(self, name: str) -> int:
        """Port the stage's server binds: RIVEG_GRPC_PORT, else the port of its address."""
        if self.grpc.port is not None:
            return self.grpc.port
        return int(self.stage(name).addr.rsplit(":", 1)[1])

    @property
    def embedded(self) -> bool:
        """True when no broker is configured: the whole pipeline runs in this process."""
        return self.broker.url is None


_toml_file: ContextVar[Path | None] = ContextVar("riveg_toml_file", default=None)
SECTIONS: tuple[str, ...] = tuple(Settings.model_fields)
assert set(STAGE_TABLE) <= set(SECTIONS), "every stage needs its configuration section"


def nest(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"vg_model": "owl@1"}`` -> ``{"vg": {"model": "owl@1"}}``: a flat name is the
    environment variable's without ``RIVEG_``, lower case. None values are dropped."""
    nested: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        if value is None:
            continue
        section, _, field = key.partition("_")
        if section not in SECTIONS or not field:
            raise ValueError(f"unknown setting {key!r}; settings are <section>_<field>, "
                             f"sections: {', '.join(SECTIONS)}")  # fmt: skip
        nested.setdefault(section, {})[field] = value
    return nested


class ConfigError(ValueError):
    """The configuration cannot be used as given; the message names each bad setting."""


def _one_line(error: ValidationError) -> str:
    """``RIVEG_GRPC_WORKERS ([grpc] workers): Input should be a valid integer (got 'abc')``."""
    parts = []
    for item in error.errors():
        loc = [str(part) for part in item["loc"]]
        if len(loc) == 1 and loc[0] not in SECTIONS:
            parts.append(f"{loc[0]!r} is not a section (sections: {', '.join(SECTIONS)})")
            continue
        where = f"RIVEG_{'_'.join(loc).upper()} ([{loc[0]}] {'.'.join(loc[1:])})"
        got = f" (got {item['input']!r})" if item["type"] != "missing" else ""
        parts.append(f"{where}: {item['msg']}{got}")
    return "; ".join(parts)


NOT_SETTINGS = frozenset({"RIVEG_CONFIG", "RIVEG_DATASETS"})
"""RIVEG_* variables that are read elsewhere: the TOML file's path, the datasets' folder."""


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """RIVEG_* variables that name no section, e.g. a name from before the sections
    (``RIVEG_CACHE_DIR`` is now ``RIVEG_MODELS_CACHE_DIR``); they have no effect."""
    return sorted(
        name
        for name in environ
        if name.startswith("RIVEG_")
        and name not in NOT_SETTINGS
        and name[len("RIVEG_") :].split("_", 1)[0].lower() not in SECTIONS
    )


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from explicit flat overrides (``broker_url=...``; None = not given), then the
    environment, then a TOML file (``config_file`` or ``RIVEG_CONFIG``)."""
    path = config_file or os.environ.get("RIVEG_CONFIG") or None
    toml_file = None
    if path:
        toml_file = Path(path)
        if not toml_file.is_file():
            raise FileNotFoundError(f"the configuration file {toml_file} does not exist")
    unknown = unknown_variables(os.environ)
    if unknown:
        log.warning("ignoring RIVEG_* variables that are not settings", names=unknown)
    token = _toml_file.set(toml_file)
    try:
        return Settings(**nest(overrides))
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None
    finally:
        _toml_file.reset(token)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings from the environment (and ``RIVEG_CONFIG``), read once."""
    return load_settings()


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as ``RIVEG_*`` environment variables, for the processes a command starts:
    a child built from them has the same settings (secrets included; unset fields left out)."""
    env: dict[str, str] = {}
    for section in SECTIONS:
        for field, value in getattr(settings, section):
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, bool):
                value = "true" if value else "false"
            env[f"RIVEG_{section}_{field}".upper()] = str(value)
    return env
