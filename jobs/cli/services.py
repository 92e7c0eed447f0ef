"""The deployment's commands: worker, api, simulator, keys, db."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from jobs.cli.app import app, db_app, err, keys_app, out

API_GRACEFUL_STOP_S = 10


@app.command()
def worker(
    concurrency: Annotated[
        int, typer.Option(help="messages handled at once (each holds several requests)")
    ] = 8,
) -> None:
    """Run a Celery worker process for this deployment (sweeper included)."""
    from jobs.migrate import ensure_schema

    ensure_schema()
    # hand over to the worker package by module name: jobs never imports worker
    argv = [sys.executable, "-m", "worker", "--concurrency", str(concurrency)]
    os.execv(sys.executable, argv)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def simulator(ctx: typer.Context) -> None:
    """Run the OpenAI-compatible upstream simulator (see `promptq simulator --help`)."""
    from jobs.simulator import main as simulator_main

    raise typer.Exit(simulator_main(ctx.args))


@app.command()
def api(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
) -> None:
    """Serve the HTTP API (OpenAI's Files and Batches API; docs at /docs)."""
    import uvicorn

    from jobs.logs import configure_logging
    from jobs.migrate import ensure_schema

    configure_logging(os.environ.get("PROMPTQ_LOG_LEVEL", "INFO"))
    ensure_schema()
    uvicorn.run(
        "jobs.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        proxy_headers=True,
        # long polls last up to a minute; a stop should not wait that long for them
        timeout_graceful_shutdown=API_GRACEFUL_STOP_S,
        # uvicorn's own lines go through the root logger: the same format and scrubbing
        log_config=None,
    )


@keys_app.command("create")
def keys_create(
    name: str,
    owner: Annotated[
        str | None,
        typer.Option(help="whose files and batches the key sees (default: NAME)"),
    ] = None,
) -> None:
    """Create a key; it is shown once, on the last line, and only its hash is stored."""
    from jobs import keys
    from jobs.db import session_scope
    from jobs.migrate import ensure_schema

    ensure_schema()
    with session_scope() as session:
        made = keys.create(session, name, owner)
    err.print(f"Key {made.row.id} for owner {made.row.owner!r}; it is not shown again:")
    print(made.plain)


@keys_app.command("list")
def keys_list() -> None:
    """List keys (their prefixes, never the keys)."""
    from jobs import keys
    from jobs.db import session_scope
    from jobs.migrate import ensure_schema

    ensure_schema()
    with session_scope() as session:
        rows = keys.list_keys(session)
    # plain tab-separated lines: whole ids and prefixes whatever the terminal's width
    print("id\tprefix\tname\towner\tcreated\trevoked")
    for row in rows:
        revoked = f"{row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "-"
        print(
            f"{row.id}\t{row.prefix}...\t{row.name}\t{row.owner}\t"
            f"{row.created_at:%Y-%m-%d %H:%M}\t{revoked}"
        )


@keys_app.command("revoke")
def keys_revoke(name_or_id: str) -> None:
    """Revoke the key with this id, or every active key with this name."""
    from jobs import keys
    from jobs.db import session_scope
    from jobs.migrate import ensure_schema

    ensure_schema()
    with session_scope() as session:
        revoked = keys.revoke(session, name_or_id)
    for row in revoked:
        out.print(f"revoked {row.id} ({row.name}, {row.prefix}...)")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply migrations to PROMPTQ_DATABASE_URL (or the embedded SQLite database)."""
    from jobs.migrate import upgrade

    upgrade()
    out.print("database is up to date")
