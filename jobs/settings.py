"""Settings from the environment (and a `.env` file), built on demand and cached."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_UPSTREAM_BASE_URL = "https://api.cometapi.com/v1"


class Settings(BaseSettings):
    """Every knob promptq has; names and defaults as in INTERFACE.md."""

    model_config = SettingsConfigDict(
        env_prefix="PROMPTQ_", env_file=".env", extra="ignore", populate_by_name=True
    )

    cometapi_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("COMETAPI_API_KEY", "cometapi_api_key")
    )
    upstream_base_url: str = DEFAULT_UPSTREAM_BASE_URL
    database_url: str | None = None
    redis_url: str | None = None
    data_dir: Path = Path(".promptq")
    max_concurrency: int = Field(default=16, ge=1)
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    max_attempts: int = Field(default=5, ge=1)
    request_timeout_s: float = Field(default=600.0, gt=0)
    # the HTTP API: an uploaded file past this size is refused with 413
    max_upload_bytes: int = Field(default=200 * 1024 * 1024, ge=1)

    # Beyond INTERFACE.md: tuning that deployments rarely touch.
    lease_s: float = Field(default=60.0, gt=0)
    sweep_interval_s: float = Field(default=5.0, gt=0)
    requeue_after_s: float = Field(default=120.0, gt=0)
    ids_per_message: int = Field(default=16, ge=1)
    price_table: Path | None = None
    # per-model overrides, JSON: {"o1-mini-2024-09-12": {"rpm": 500, "tpm": 200000,
    # "max_concurrency": 8}}; limits are kept per upstream and model
    model_limits: dict[str, dict[str, int]] = Field(default_factory=dict)
    # `json`: one JSON object per log line (ts, level, logger, message, batch_id, request_id)
    log_format: Literal["text", "json"] = "text"
    # webhooks: every delivery is signed with the secret (required to ask for a webhook)
    webhook_secret: SecretStr | None = None
    webhook_max_attempts: int = Field(default=10, ge=1)
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_interval_s: float = Field(default=1.0, gt=0)  # how often workers send due ones
    webhook_backoff_base_s: float = Field(default=10.0, gt=0)  # the first retry's wait, doubling

    @property
    def upstream_scope(self) -> str:
        """The name limits are kept under for this upstream (its host and port)."""
        return urlsplit(self.upstream_base_url).netloc or self.upstream_base_url

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def files_dir(self) -> Path:
        """Where the HTTP API keeps uploaded files (one file per File row, named by its id)."""
        return self.resolved_data_dir / "files"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_data_dir / 'promptq.db'}"

    @property
    def upstream_key(self) -> str | None:
        return self.cometapi_api_key.get_secret_value() if self.cometapi_api_key else None


@functools.cache
def get_settings() -> Settings:
    """The process's settings; `get_settings.cache_clear()` rebuilds them (tests, forks)."""
    return Settings()
