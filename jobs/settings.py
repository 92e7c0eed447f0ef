"""Settings from the environment (and a `.env` file), built on demand and cached."""

from __future__ import annotations

import functools
from pathlib import Path

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

    # Beyond INTERFACE.md: tuning that deployments rarely touch.
    lease_s: float = Field(default=60.0, gt=0)
    sweep_interval_s: float = Field(default=5.0, gt=0)
    requeue_after_s: float = Field(default=120.0, gt=0)
    ids_per_message: int = Field(default=16, ge=1)
    price_table: Path | None = None

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

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
