"""Schema migrations: `promptq db upgrade`, and the embedded setup's automatic upgrade."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

import migrations
from jobs.settings import get_settings

MIGRATIONS_DIR = Path(migrations.__file__).parent


def alembic_config(url: str | None = None) -> Config:
    """Alembic's config built in code, so migrations run from an installed package too."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # '%' is interpolation syntax in Alembic's config parser
    config.set_main_option(
        "sqlalchemy.url", (url or get_settings().resolved_database_url).replace("%", "%%")
    )
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def current_revision(url: str | None = None) -> str | None:
    from alembic.runtime.migration import MigrationContext

    from jobs.db import get_engine

    with get_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def ensure_schema() -> None:
    """The embedded SQLite database migrates itself; any other must be migrated explicitly."""
    import fcntl

    from jobs.errors import ServiceError

    settings = get_settings()
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
        # two promptq processes starting at once must not both create the tables
        with (settings.resolved_data_dir / "migrate.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if current_revision(url) != head_revision():
                upgrade(url)
        return
    current = current_revision(url)
    if current != head_revision():
        raise ServiceError(
            f"the database schema is at revision {current or 'none'}, not "
            f"{head_revision()}: run `promptq db upgrade`"
        )
