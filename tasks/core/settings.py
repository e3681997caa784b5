"""The one settings object. Every value can be set with a `SLIMLINE_` environment variable."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasks.core.version import package_version


class Resources(BaseModel):
    """CPU and memory a step's container or pod asks for (Kubernetes quantities), and may use."""

    model_config = {"extra": "forbid"}

    cpu: str = Field(
        default="2", pattern=r"^[0-9]+(\.[0-9]+)?m?$", description="CPU request, e.g. 2 or 500m."
    )
    memory: str = Field(
        default="8Gi", pattern=r"^[0-9]+(Ki|Mi|Gi|Ti|K|M|G|T)?$", description="Memory request and limit."
    )


class StepPool(BaseModel):
    """Where a step's container or pod runs: the nodes (labels), the GPUs it takes and its image."""

    model_config = {"extra": "forbid"}

    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels of the pool.")
    gpus: int = Field(default=0, ge=0, le=16, description="GPUs the step takes (nvidia.com/gpu).")
    image: str = Field(default="", description="The step's image; empty: the task image.")


Execution = Literal["inprocess", "container", "kubernetes"]


class Settings(BaseSettings):
    """Where slimline keeps its state and which services it talks to."""

    model_config = SettingsConfigDict(env_prefix="SLIMLINE_", extra="forbid")

    home: Path = Field(
        default=Path(".slimline"),
        description="Root for caches, artifacts, the Airflow and MLflow databases.",
    )
    checkpoint_store: str = Field(
        default="",
        description="Checkpoint store URI (file:///... or s3://bucket/prefix); default <home>/store.",
    )
    mlflow_tracking_uri: str = Field(
        default="", description="MLflow tracking URI; default a SQLite file in the home."
    )
    artifact_root: str = Field(default="", description="MLflow artifact root; default <home>/mlartifacts.")
    s3_endpoint_url: str | None = Field(
        default=None, description="Endpoint of an S3-compatible store (MinIO, moto, ...)."
    )
    registered_model_prefix: str = Field(
        default="", description="Prefix for registered model names (e.g. a team name)."
    )
    nightly_schedule: str = Field(
        default="0 2 * * *", description="Cron schedule of the nightly_compression DAG."
    )
    recipe: Path = Field(
        default=Path(__file__).resolve().parents[2] / "recipes" / "minilm-sentiment.yaml",
        description="Recipe the scheduled DAG runs when a run names none.",
    )
    targets_dir: Path = Field(
        default=Path(__file__).resolve().parents[2] / "targets",
        description="Folder of target files (<name>.yaml): the kinds of device engines are built for.",
    )
    fleets_dir: Path = Field(
        default=Path(__file__).resolve().parents[2] / "fleets",
        description="Folder of fleet files (<name>.yaml): device groups and the targets they may be.",
    )
    canary_examples: int = Field(
        default=64, ge=8, le=2048, description="Evaluation examples in the canary set engines are checked on."
    )
    max_checkpoint_bytes: int = Field(
        default=4 * 1024**3, description="Largest checkpoint slimline will fetch, in bytes."
    )
    # Architecture limits checked against config.json before anything loads a checkpoint; the
    # defaults admit BERT-large-sized encoders and fit a small machine (2 cores, 23 GB).
    max_layers: int = Field(default=48, gt=0, description="Most encoder layers a checkpoint may declare.")
    max_hidden_size: int = Field(
        default=4096, gt=0, description="Largest hidden size a checkpoint may declare."
    )
    max_intermediate_size: int = Field(
        default=16384, gt=0, description="Largest feed-forward size a checkpoint may declare."
    )
    max_vocab_size: int = Field(
        default=300_000, gt=0, description="Largest vocabulary a checkpoint may declare."
    )
    max_positions: int = Field(
        default=8192, gt=0, description="Most position embeddings a checkpoint may declare."
    )
    # The default follows the (validated) home; the public key is the same path plus `.pub`.
    signing_key: Path = Field(
        default_factory=lambda data: data["home"] / "keys" / "release.key",
        description="Private key that signs release bundles (PEM); default <home>/keys/release.key. "
        "It never enters a bundle, an artifact or a log.",
    )
    release_expiry_days: int = Field(
        default=30, ge=1, description="Days a signed release bundle stays valid on devices."
    )
    airflow_api_url: str = Field(
        default="http://127.0.0.1:8080",
        description="Airflow's REST API (its api-server), where approvals are answered.",
    )
    rollout_poke_seconds: float = Field(
        default=30, gt=0, description="How often fleet_release reads device reports during a wave."
    )
    fleet_channel: str = Field(
        default="",
        description="Fleet channel URI (file:///... or s3://bucket/prefix) that agents poll; "
        "default <home>/channel.",
    )
    openlineage_transport: str = Field(
        default="",
        description="Where the DAG tasks' OpenLineage events go: a transport as JSON (Airflow's "
        '[openlineage] transport, e.g. {"type": "http", "url": "http://marquez:5000"}) or the http(s) URL '
        "of a lineage server (Marquez or any backend); default one JSON event per line appended to "
        "<home>/lineage/openlineage.jsonl.",
    )
    openlineage_namespace: str = Field(
        default="slimline", min_length=1, description="OpenLineage namespace of the DAGs' jobs."
    )

    @field_validator("openlineage_transport")
    @classmethod
    def _transport(cls, value: str) -> str:
        value = value.strip()
        if value.startswith("{"):
            try:
                parsed = json.loads(value)
            except ValueError as exc:
                raise ValueError(f"not valid JSON ({exc})") from None
            if not isinstance(parsed.get("type"), str):
                raise ValueError('a transport object needs a "type" (http, file, kafka, console, ...)')
        elif value and (urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc):
            raise ValueError(f"{value!r} is neither a transport JSON object nor an http(s) URL")
        return value

    audit_log: str = Field(
        default="",
        description="Audit log store URI (file:///... or s3://bucket/prefix): one object per record, "
        "never overwritten; default <home>/audit.",
    )
    audit_witness: Path = Field(
        default_factory=lambda data: data["home"] / "audit-witness.json",
        description="Where `slimline audit verify` remembers the last signed head it verified, per log, "
        "so that a log cut short with the heads above the cut deleted is still caught; keep it where "
        "the log's writers cannot edit it. Default <home>/audit-witness.json.",
    )
    audit_head_every: int = Field(
        default=100,
        ge=1,
        description="Sign the audit log's head with the release key every this many records.",
    )

    execution: Execution = Field(
        default="inprocess",
        description="Where the nightly DAG's heavy steps (each variant, each engine build) run: `inprocess` "
        "in the Airflow task's own process; `container` in the task image through the Docker API "
        "(podman's socket, `docker_url`); `kubernetes` as a pod per step (cncf-kubernetes provider, "
        "connection `kubernetes_conn_id`). The step is the same code and its results travel through the "
        "artifact keys and the registry, so all three give the same registry.",
    )
    task_image: str = Field(
        default="",
        description="Image the steps run in outside the Airflow process; default "
        "localhost/slimline-task:<version> (what `make images` builds).",
    )
    docker_url: str = Field(
        default="unix:///run/podman/podman.sock",
        description="Docker-compatible API the `container` steps are started through "
        "(`podman system service`, or Docker's own socket).",
    )
    kubernetes_conn_id: str = Field(
        default="kubernetes_default", description="Airflow connection the `kubernetes` steps use."
    )
    kubernetes_namespace: str = Field(default="default", description="Namespace of the step pods.")
    kubernetes_home_claim: str = Field(
        default="",
        description="PersistentVolumeClaim (ReadWriteMany) mounted at the home in every step pod, so "
        "that steps on any node reuse each other's artifacts; empty: local stores are mounted from "
        "the node (hostPath, one-node clusters), remote ones need nothing.",
    )
    variant_resources: Resources = Field(
        default_factory=Resources,
        description='What a variant step asks for, as JSON: {"cpu": "2", "memory": "8Gi"}.',
    )
    variant_pool: StepPool = Field(
        default_factory=StepPool,
        description='Where variant steps run, as JSON: {"gpus": 1, "node_selector": {...}, "image": '
        '"REGISTRY/slimline-gpu-worker:VERSION"} puts their training on a GPU worker (it trains on '
        "CUDA whenever torch sees a GPU); default: the task image on any node, no GPU.",
    )
    engine_resources: Resources = Field(
        default_factory=lambda: Resources(cpu="2", memory="4Gi"),
        description="What an engine build asks for (GPUs and node pools come from the target file).",
    )

    @cached_property
    def step_image(self) -> str:
        return self.task_image or f"localhost/slimline-task:{package_version()}"

    @field_validator("home", "signing_key", "audit_witness")
    @classmethod
    def _absolute_path(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @cached_property
    def store_uri(self) -> str:
        return self.checkpoint_store or (self.home / "store").as_uri()

    @cached_property
    def channel_uri(self) -> str:
        return self.fleet_channel or (self.home / "channel").as_uri()

    @cached_property
    def audit_log_uri(self) -> str:
        return self.audit_log or (self.home / "audit").as_uri()

    @cached_property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    @cached_property
    def mlflow_artifact_root(self) -> str:
        return self.artifact_root or (self.home / "mlartifacts").as_uri()

    @property
    def artifacts_dir(self) -> Path:
        """Content-addressed step outputs (see tasks.core.artifacts)."""
        return self.home / "artifacts"

    @property
    def cache_dir(self) -> Path:
        """Verified checkpoints fetched from the store, by content digest."""
        return self.home / "cache"

    @property
    def locks_dir(self) -> Path:
        """Lock files (see tasks.core.locks): one per checkpoint and recipe run locally, the cache index's."""
        return self.home / "locks"

    @property
    def releases_dir(self) -> Path:
        """Signed release bundles, `<fleet>/<number>/bundle` beside `bundle.sig` (see tasks.release)."""
        return self.home / "releases"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def lineage_file(self) -> Path:
        """The default OpenLineage transport's file (see `openlineage_transport`)."""
        return self.home / "lineage" / "openlineage.jsonl"

    @cached_property
    def lineage_transport(self) -> dict[str, Any]:
        """The OpenLineage transport config (`openlineage_transport`, or the default file)."""
        if self.openlineage_transport.startswith("{"):
            parsed: dict[str, Any] = json.loads(self.openlineage_transport)
            return parsed
        if self.openlineage_transport:
            return {"type": "http", "url": self.openlineage_transport}
        # append: one file of JSON lines (without it the transport writes one file per event)
        return {"type": "file", "log_file_path": str(self.lineage_file), "append": True}

    def environment(self) -> dict[str, str]:
        """The variables that make a child process (Airflow, a container) see these settings."""
        env = {
            "SLIMLINE_HOME": str(self.home),
            "SLIMLINE_CHECKPOINT_STORE": self.store_uri,
            "SLIMLINE_MLFLOW_TRACKING_URI": self.tracking_uri,
            "SLIMLINE_ARTIFACT_ROOT": self.mlflow_artifact_root,
            "SLIMLINE_NIGHTLY_SCHEDULE": self.nightly_schedule,
            "SLIMLINE_RECIPE": str(self.recipe),
            "SLIMLINE_TARGETS_DIR": str(self.targets_dir),
            "SLIMLINE_FLEETS_DIR": str(self.fleets_dir),
            "SLIMLINE_CANARY_EXAMPLES": str(self.canary_examples),
            "SLIMLINE_REGISTERED_MODEL_PREFIX": self.registered_model_prefix,
            "SLIMLINE_MAX_CHECKPOINT_BYTES": str(self.max_checkpoint_bytes),
            "SLIMLINE_MAX_LAYERS": str(self.max_layers),
            "SLIMLINE_MAX_HIDDEN_SIZE": str(self.max_hidden_size),
            "SLIMLINE_MAX_INTERMEDIATE_SIZE": str(self.max_intermediate_size),
            "SLIMLINE_MAX_VOCAB_SIZE": str(self.max_vocab_size),
            "SLIMLINE_MAX_POSITIONS": str(self.max_positions),
            "SLIMLINE_SIGNING_KEY": str(self.signing_key),
            "SLIMLINE_RELEASE_EXPIRY_DAYS": str(self.release_expiry_days),
            "SLIMLINE_FLEET_CHANNEL": self.channel_uri,
            "SLIMLINE_AIRFLOW_API_URL": self.airflow_api_url,
            "SLIMLINE_ROLLOUT_POKE_SECONDS": str(self.rollout_poke_seconds),
            "SLIMLINE_AUDIT_LOG": self.audit_log_uri,
            "SLIMLINE_AUDIT_HEAD_EVERY": str(self.audit_head_every),
            "SLIMLINE_AUDIT_WITNESS": str(self.audit_witness),
            "SLIMLINE_OPENLINEAGE_TRANSPORT": self.openlineage_transport,
            "SLIMLINE_OPENLINEAGE_NAMESPACE": self.openlineage_namespace,
            "SLIMLINE_EXECUTION": self.execution,
            "SLIMLINE_TASK_IMAGE": self.step_image,
            "SLIMLINE_DOCKER_URL": self.docker_url,
            "SLIMLINE_KUBERNETES_CONN_ID": self.kubernetes_conn_id,
            "SLIMLINE_KUBERNETES_NAMESPACE": self.kubernetes_namespace,
            "SLIMLINE_KUBERNETES_HOME_CLAIM": self.kubernetes_home_claim,
            "SLIMLINE_VARIANT_RESOURCES": self.variant_resources.model_dump_json(),
            "SLIMLINE_VARIANT_POOL": self.variant_pool.model_dump_json(),
            "SLIMLINE_ENGINE_RESOURCES": self.engine_resources.model_dump_json(),
        }
        if self.s3_endpoint_url:
            env["SLIMLINE_S3_ENDPOINT_URL"] = self.s3_endpoint_url
        return env
