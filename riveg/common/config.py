"""Configuration from environment variables (prefix ``RIVEG_``) or a TOML file (``RIVEG_CONFIG``).

Every field can be set as ``RIVEG_<FIELD>`` (upper case), e.g. ``RIVEG_BROKER_URL``. A TOML file
named by ``RIVEG_CONFIG`` gives defaults with the same field names in lower case; environment
variables win over the file.
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from riveg import STAGES

DEFAULT_PORTS = {"llm": 50051, "mner": 50052, "ve": 50053, "vg": 50054, "seg": 50055}


def default_cache_dir() -> Path:
    """Where converted model weights and the local object store live by default."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "riveg"


class Settings(BaseSettings):
    """All knobs of RiVEG-serve; see the README's configuration reference."""

    model_config = SettingsConfigDict(env_prefix="RIVEG_", extra="ignore")

    # Orchestration
    broker_url: str | None = Field(None, description="Celery broker; unset = embedded mode")
    result_backend: str = Field("redis://127.0.0.1:6379/0", description="Celery result backend")
    queue_prefix: str = Field("riveg", description="Celery queues are `<prefix>.<stage>`")
    knowledge: bool = Field(False, description="run the LLM knowledge step before MNER")
    task_time_limit_s: int = Field(600, description="hard limit of one stage task")

    # Object store
    store: Literal["local", "s3"] | None = Field(
        None, description="object store kind; default: s3 with a broker, else local"
    )
    store_path: Path = Field(
        default_factory=lambda: default_cache_dir() / "store",
        description="folder of the local store (default: <cache>/store)",
    )
    s3_endpoint: str = Field("127.0.0.1:9000", description="S3/MinIO host:port")
    s3_access_key: str = Field("minioadmin", description="S3 access key (a Secret in k8s)")
    s3_secret_key: str = Field("minioadmin", description="S3 secret key (a Secret in k8s)")
    s3_bucket: str = Field("riveg", description="bucket holding images, masks and results")
    s3_secure: bool = Field(False, description="use HTTPS to reach S3")

    # Stage servers: where clients find them, which backend each serves
    llm_addr: str = Field(f"127.0.0.1:{DEFAULT_PORTS['llm']}", description="LLM server host:port")
    mner_addr: str = Field(
        f"127.0.0.1:{DEFAULT_PORTS['mner']}", description="MNER server host:port"
    )
    ve_addr: str = Field(f"127.0.0.1:{DEFAULT_PORTS['ve']}", description="VE server host:port")
    vg_addr: str = Field(f"127.0.0.1:{DEFAULT_PORTS['vg']}", description="VG server host:port")
    seg_addr: str = Field(f"127.0.0.1:{DEFAULT_PORTS['seg']}", description="SEG server host:port")
    llm_backend: str = Field("gemma", description="LLM backend: gemma, openai, replay")
    mner_backend: str = Field(
        "crf", description="MNER backend: crf (shipped encoder + CRF tagger) or spacy"
    )
    mner_model: Path | None = Field(
        None, description="crf model folder (default: the shipped services/mner/weights)"
    )
    mner_quantize: bool = Field(
        False, description="crf: dynamic int8 encoder (faster, -0.6 to -1.1 F1)"
    )
    ve_backend: str = Field("person", description="VE backend: person, groundability, clip, itm")
    vg_backend: str = Field("person", description="VG backend: person, owl, grounding-dino")
    seg_backend: str = Field(
        "grabcut", description="SEG backend: grabcut, selfie, sam, segment-anything"
    )
    grpc_port: int | None = Field(None, description="server port override (default: the addr's)")
    grpc_workers: int = Field(4, description="threads serving RPCs per server")
    grpc_max_message_mb: int = Field(32, description="largest gRPC message, both directions")
    rpc_timeout_s: float = Field(120.0, description="deadline of each stage call")
    shutdown_grace_s: float = Field(10.0, description="time in-flight calls get on SIGTERM")

    # Vision stages: model store and model versions (issue 5)
    model_store_path: Path | None = Field(
        None,
        description="local folder of `<stage>/<name>/<version>/` models; unset: `models/` in "
        "the object store",
    )
    ve_model: str | None = Field(
        None, description="VE model `name@version` (model store or builtin); unset: the backend"
    )
    vg_model: str | None = Field(
        None, description="VG model `name@version` (model store or builtin); unset: the backend"
    )
    seg_model: str | None = Field(
        None, description="SEG model `name@version` (model store or builtin); unset: the backend"
    )

    # Models and runtime
    cache_dir: Path = Field(
        default_factory=default_cache_dir, description="converted weights (default ~/.cache/riveg)"
    )
    torch_threads: int = Field(0, description="torch CPU threads; 0 = torch's default")
    llm_max_new_tokens: int = Field(24, description="cap of one entity expansion, in tokens")
    knowledge_max_new_tokens: int = Field(96, description="cap of one knowledge paragraph")
    # LLM stage: backend per job type, OpenAI-compatible endpoint, prompts, cache, descriptions
    llm_knowledge_backend: str | None = Field(
        None, description="LLM backend of knowledge jobs (default: RIVEG_LLM_BACKEND)"
    )
    llm_expand_backend: str | None = Field(
        None, description="LLM backend of expansion jobs (default: RIVEG_LLM_BACKEND)"
    )
    llm_api_base: str = Field(
        "http://127.0.0.1:8000/v1", description="OpenAI-compatible endpoint of the `openai` backend"
    )
    llm_api_model: str = Field("", description="model name sent to the endpoint (required)")
    llm_api_mode: Literal["chat", "completions"] = Field(
        "completions", description="endpoint flavour: /completions or /chat/completions"
    )
    llm_api_key: SecretStr | None = Field(
        None, description="bearer key of the endpoint (a Secret in k8s); unset = none sent"
    )
    llm_api_timeout_s: float = Field(60.0, description="timeout of one HTTP request")
    llm_api_retries: int = Field(4, description="retries on 429, 5xx and timeouts (backoff)")
    llm_api_concurrency: int = Field(4, description="most requests in flight to the endpoint")
    llm_vision_model: str | None = Field(
        None, description="vision model on the endpoint for Describe; unset = captions/detector"
    )
    llm_examples: int = Field(5, description="similar annotated examples in a knowledge prompt")
    llm_examples_pool: str = Field(
        "twitter2017,twitter2015", description="datasets whose manual annotations are examples"
    )
    llm_cache: bool = Field(True, description="cache generations in the object store")
    log_format: Literal["json", "console"] = Field("console", description="log lines on stderr")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")

    @field_validator("mner_model", "model_store_path", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        """An empty optional path (``RIVEG_MNER_MODEL=``, as a ConfigMap may set it) is unset:
        the shipped MNER model, the object store's ``models/``; never the working folder."""
        return None if value == "" else value

    @model_validator(mode="after")
    def _default_store(self) -> Settings:
        if self.store is None:
            self.store = "s3" if self.broker_url else "local"
        return self

    def stage_addr(self, stage: str) -> str:
        """host:port where the given stage's server listens."""
        _check_stage(stage)
        return getattr(self, f"{stage}_addr")

    def stage_backend(self, stage: str) -> str:
        """Backend name configured for the stage."""
        _check_stage(stage)
        return getattr(self, f"{stage}_backend")

    def server_port(self, stage: str) -> int:
        """Port the stage's server binds: RIVEG_GRPC_PORT, else the port of its address."""
        if self.grpc_port is not None:
            return self.grpc_port
        return int(self.stage_addr(stage).rsplit(":", 1)[1])

    @property
    def embedded(self) -> bool:
        """True when no broker is configured: the whole pipeline runs in this process."""
        return not self.broker_url


def _check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")


def _file_values(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"RIVEG_CONFIG names {file}, which does not exist")
    with file.open("rb") as handle:
        return tomllib.load(handle)


def load_settings(config_file: str | None = None, **overrides: Any) -> Settings:
    """Settings from a TOML file (optional), then the environment, then explicit overrides."""
    values = _file_values(config_file or os.environ.get("RIVEG_CONFIG"))
    env_names = {name for name in Settings.model_fields if f"RIVEG_{name.upper()}" in os.environ}
    chosen = {k: v for k, v in values.items() if k not in env_names}
    chosen.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**chosen)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once."""
    return load_settings()
