"""One settings object for the whole service, read from ``PIKFIX_*`` environment variables.

Defaults describe the embedded mode (SQLite file, local folder as object store, tasks run
in-process), so the product works with no servers at all; setting a broker, database and
storage URL switches to the distributed mode without touching code.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from pikfix.imageio import MAX_PIXELS


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PIKFIX_", env_ignore_empty=True, extra="ignore")

    data_dir: Path = Field(Path(".pikfix"), description="Embedded mode: SQLite file and local objects")
    state_dir: Path | None = Field(
        None, description="Beat's schedule and Flower's task history; default data_dir/state"
    )
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite in data_dir")
    broker_url: str | None = Field(None, description="Celery broker (redis://...); unset = run tasks eagerly")
    storage_url: str | None = Field(None, description="s3://bucket[/prefix] or file:///path; default data_dir")
    s3_endpoint_url: str | None = Field(None, description="MinIO or any S3-compatible endpoint")
    s3_public_endpoint_url: str | None = Field(
        None,
        description="Endpoint written into presigned URLs, where clients reach the store (default: s3_endpoint_url)",
    )
    s3_region: str | None = None
    s3_connect_timeout_s: float = 5.0
    s3_read_timeout_s: float = 60.0
    s3_max_attempts: int = 3
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None

    checkpoint: str | None = Field(
        None, description="Model checkpoint path or s3:// URI; default = shipped lite; 'null' = no model (benchmarks)"
    )
    backbone_weights: str | None = Field(None, description="ImageNet ResNet34 state_dict for the similarity net")
    retrieval_weights: str | None = Field(None, description="ImageNet VGG19 state_dict for reference retrieval")
    preload_model: bool = Field(True, description="Workers load the model at process start, not on first job")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    max_image_pixels: int = Field(MAX_PIXELS, description="Decompression-bomb guard for decoded photos")
    working_size: int = Field(256, description="Colourization working resolution (short side, pixels)")
    retrieval_top_k: int = 5
    reference_refresh_s: float = Field(
        2.0, ge=0, description="A worker looks for newly indexed references at most this often (seconds)")

    api_read_timeout_s: float = Field(10.0, description="GET requests answer 503 if no response started by then")
    max_upload_bytes: int = 200 * 1024 * 1024
    max_request_bytes: int = 2 * 1024 * 1024 * 1024
    max_archive_members: int = 100_000
    max_archive_uncompressed_bytes: int = 50 * 1024 * 1024 * 1024
    max_archive_ratio: float = 200.0

    job_soft_time_limit_s: int = 1800
    job_hard_time_limit_s: int = 2100
    job_stuck_after_s: int = 3600
    job_heartbeat_s: float = Field(15.0, gt=0, description="how often a worker touches a running job")
    job_heartbeat_timeout_s: float = Field(
        60.0, gt=0, description="a running job silent this long is re-sent (its worker died)"
    )
    job_max_attempts: int = 5
    maintenance_interval_s: float = 60.0
    tenant_backlog_limit: int = 200
    worker_max_tasks_per_child: int = 200

    flower_basic_auth: str | None = None
    webhook_secret: str = "change-me"
    webhook_allow_private: bool = Field(
        False, description="Let webhooks reach loopback/private/link-local addresses (on-prem receivers)"
    )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'pikfix.db').resolve()}"

    @property
    def resolved_storage_url(self) -> str:
        if self.storage_url:
            return self.storage_url
        return (self.data_dir / "objects").resolve().as_uri()

    @property
    def resolved_state_dir(self) -> Path:
        """Where processes keep their own small state files, never the current folder."""
        return (self.state_dir or self.data_dir / "state").resolve()

    @property
    def s3_client_options(self) -> dict[str, str | None]:
        """The endpoint and credentials as ``boto3.client`` takes them, for the model library's s3:// URIs."""
        return {"endpoint_url": self.s3_endpoint_url, "region_name": self.s3_region,
                "aws_access_key_id": self.s3_access_key_id,
                "aws_secret_access_key": self.s3_secret_access_key}

    @property
    def eager(self) -> bool:
        """No broker configured: tasks run in-process (the embedded default)."""
        return not self.broker_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
