"""The `promptq` command line: thin commands over submit, batches, results and the deployment."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from jobs.errors import InputError, PromptqError

app = typer.Typer(
    help="promptq: run thousands of LLM prompts reliably, with usage and cost accounting.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
keys_app = typer.Typer(help="API keys for the HTTP API.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

out = Console()
# soft wrap: messages keep their lines whatever the terminal's width (and in logs)
err = Console(stderr=True, soft_wrap=True)

OutputOpt = Annotated[Path, typer.Option("-o", "--output", help="where to write results (JSONL)")]
ErrorsOpt = Annotated[
    Path | None,
    typer.Option("--errors", help="where failed requests go (default: OUTPUT.errors.jsonl)"),
]


API_GRACEFUL_STOP_S = 10


InputArg = Annotated[
    Path | None,
    typer.Argument(help="OpenAI batch JSONL (or build requests with --template/--records)"),
]
TemplateOpt = Annotated[
    Path | None, typer.Option(help="prompt template: {text} {path} {name}, or record {fields}")
]
FilesOpt = Annotated[
    list[str] | None,
    typer.Option("--files", help="glob of files, one request each (repeatable; ** recurses)"),
]
RecordsOpt = Annotated[Path | None, typer.Option(help="CSV or JSONL records, one request each")]
ModelOpt = Annotated[str | None, typer.Option(help="model, with --template")]
NotBeforeOpt = Annotated[
    str | None,
    typer.Option(help="send nothing before TIME: ISO 8601 (local without an offset) or HH:MM"),
]
EndpointOpt = Annotated[
    str | None, typer.Option(help="the batch's endpoint (default: the lines' url)")
]


def _source(
    input: Path | None,
    template: Path | None,
    files: list[str] | None,
    records: Path | None,
    model: str | None,
    endpoint: str | None,
):  # type: ignore[no-untyped-def]
    """The request lines, from a JSONL file or built from a template; and their name."""
    from jobs import submit, templates

    if template is None:
        if input is None or files or records:
            raise typer.BadParameter("give INPUT.jsonl, or --template with --files or --records")
        return submit.open_lines(_existing(input)), str(input)
    if input is not None or bool(files) == bool(records) or not model:
        raise typer.BadParameter(
            "--template takes --model and either --files or --records (and no INPUT)"
        )
    tmpl = templates.load_template(template)
    url = endpoint or "/v1/responses"
    if files:
        cwd = Path.cwd()
        found = templates.expand_globs(files, cwd)
        lines = templates.file_lines(tmpl, found, cwd=cwd, model=model, endpoint=url)
    else:
        lines = templates.record_lines(tmpl, _existing(records), model=model, endpoint=url)
    return (lambda: lines), str(template)


def _not_before(text: str | None):  # type: ignore[no-untyped-def]
    from jobs.schedule import parse_time

    return parse_time(text) if text else None


def errors_path(output: Path, errors: Path | None) -> Path:
    return errors or output.with_name(output.stem + ".errors" + (output.suffix or ".jsonl"))


@app.command()
def run(
    output: OutputOpt,
    input: InputArg = None,
    errors: ErrorsOpt = None,
    workers: Annotated[int, typer.Option(help="worker processes to start")] = 1,
    fresh: Annotated[bool, typer.Option(help="start over even if this file ran before")] = False,
    template: TemplateOpt = None,
    files: FilesOpt = None,
    records: RecordsOpt = None,
    model: ModelOpt = None,
    endpoint: EndpointOpt = None,
    not_before: NotBeforeOpt = None,
) -> None:
    """Run a whole batch on this machine: starts what it needs, shows progress, writes results."""
    from jobs import batches, results, validate
    from jobs.db import session_scope
    from jobs.migrate import ensure_schema
    from jobs.settings import get_settings

    settings = get_settings()
    source, name = _source(input, template, files, records, model, endpoint)
    scan = validate.check(source(), name=name, endpoint=endpoint)
    start = _not_before(not_before)
    ensure_schema()
    errors = errors_path(output, errors)
    with session_scope() as session:
        earlier = None if fresh else batches.find_resumable(session, scan.sha256)
    if earlier is not None and earlier.status == "completed":
        # nothing to run: no simulator, Redis or worker to start
        err.print(
            f"{earlier.id} already ran this file to completion; writing its results "
            "(--fresh runs it again)"
        )
        final, batch_id = earlier, earlier.id
    else:
        final, batch_id = _run_deployment(settings, workers, fresh, source, name, scan, start)
    with session_scope() as session:
        done, failed = results.export(session, batch_id, output, errors)
    err.print(
        f"[bold]{final.status}[/]: {done} succeeded, {failed} ended otherwise; "
        f"{final.total_tokens:,} tokens (reasoning {final.reasoning_tokens:,}, cached input "
        f"{final.cached_input_tokens:,}), ${final.cost_usd:.4f}"
    )
    out.print(f"Results: {output}")
    if failed:
        out.print(f"Errors:  {errors}")
    if final.status != "completed":
        raise typer.Exit(1)


def _run_deployment(settings, workers, fresh, source, name, scan, start):  # type: ignore[no-untyped-def]
    """Start what the batch needs, resume or submit it, follow it to its end."""
    from jobs import batches, progress, submit
    from jobs.db import session_scope
    from jobs.local import LocalDeployment

    try:
        with LocalDeployment(settings, workers=workers, say=err.print) as deployment:
            with session_scope() as session:
                found = None if fresh else batches.find_resumable(session, scan.sha256)
                if found is not None:
                    err.print(
                        f"Resuming {found.id} ({found.request_completed + found.request_failed}"
                        f" of {found.request_total} already done; --fresh starts over)"
                    )
                    batches.resume(session, found.id, reclaim_running=deployment.owns_everything)
                    batch_id = found.id
            if found is None:
                batch_id = submit.create_batch(source, name=name, scan=scan, not_before=start).id
                err.print(f"Submitted {batch_id}: {scan.requests} requests")
            final = progress.follow(batch_id, err, check=deployment.check_workers)
            return final, batch_id
    except KeyboardInterrupt:
        err.print(
            "\n[yellow]Interrupted; workers stopped. Finished results are stored: run the "
            "same command again to resume where this stopped.[/]"
        )
        raise typer.Exit(130) from None


@app.command(name="submit")
def submit_cmd(
    input: InputArg = None,
    endpoint: EndpointOpt = None,
    completion_window: Annotated[str, typer.Option(help="24h, 1h or 10m")] = "24h",
    wait: Annotated[bool, typer.Option(help="show progress until the batch ends")] = False,
    template: TemplateOpt = None,
    files: FilesOpt = None,
    records: RecordsOpt = None,
    model: ModelOpt = None,
    not_before: NotBeforeOpt = None,
) -> None:
    """Queue a batch; prints its id on the last line."""
    from jobs import progress, submit, validate
    from jobs.migrate import ensure_schema

    source, name = _source(input, template, files, records, model, endpoint)
    scan = validate.check(source(), name=name, endpoint=endpoint)  # before touching state
    start = _not_before(not_before)
    ensure_schema()
    batch = submit.create_batch(
        source, name=name, completion_window=completion_window, scan=scan, not_before=start
    )
    if start is not None:
        err.print(f"Nothing is sent before {start.astimezone():%Y-%m-%d %H:%M:%S %Z}.")
    err.print(f"Queued {batch.request_total} requests.")
    if wait:
        progress.follow(batch.id, err)
    print(batch.id)


@app.command()
def status(
    batch_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="the OpenAI Batch object")] = False,
) -> None:
    """Show a batch."""
    from jobs import batches
    from jobs.db import session_scope

    with session_scope() as session:
        batch = batches.get_batch(session, batch_id)
        obj = batches.to_openai(batch)
        counts = batches.status_counts(session, batch_id)
    if as_json:
        print(json.dumps(obj, indent=2))
        return
    table = Table(show_header=False, box=None)
    usage = obj["usage"]
    rows = [
        ("batch", obj["id"]),
        ("status", obj["status"]),
        ("endpoint", obj["endpoint"]),
        ("requests", ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))),
        (
            "tokens",
            f"{usage['total_tokens']:,} (input {usage['input_tokens']:,}, cached "
            f"{usage['input_tokens_details']['cached_tokens']:,}, output "
            f"{usage['output_tokens']:,}, reasoning "
            f"{usage['output_tokens_details']['reasoning_tokens']:,})",
        ),
        ("cost", f"${obj['cost_usd']:.6f}"),
    ]
    rows.append(("upstream", _limits_line()))
    for key, value in rows:
        table.add_row(f"[bold]{key}", str(value))
    out.print(table)


def _limits_line() -> str:
    """The fleet's shared limits now: in flight, effective (adaptive) concurrency, pause."""
    from jobs.embedded import EmbeddedRedis
    from jobs.fleet import limits_view
    from jobs.settings import get_settings

    settings = get_settings()
    url = settings.redis_url
    if not url:  # an embedded Redis is only looked at, never started, by `status`
        embedded = EmbeddedRedis(settings.resolved_data_dir)
        if not embedded.is_running():
            return "idle (the embedded Redis is not running)"
        url = embedded.url
    try:
        view = limits_view(settings, url)
    except Exception as exc:  # noqa: BLE001 - status must work with Redis down
        return f"limits unknown (Redis: {exc})"
    line = (
        f"{view['upstream']}: {view['in_flight']} in flight, effective concurrency "
        f"{view['effective_concurrency']} of {view['max_concurrency']}"
    )
    if view["paused_for_s"]:
        line += f", paused for {view['paused_for_s']:.1f} s after a 429"
    return line


@app.command()
def watch(batch_id: str) -> None:
    """Live progress of a batch (done, failed, tokens, cost, rate, ETA) until it ends."""
    from jobs import batches, progress
    from jobs.db import session_scope

    with session_scope() as session:
        batches.get_batch(session, batch_id)
    final = progress.follow(batch_id, err)
    out.print(f"{batch_id}: {final.status}")


@app.command()
def results(
    batch_id: str,
    output: OutputOpt,
    errors: ErrorsOpt = None,
    format: Annotated[
        str, typer.Option("--format", help="jsonl (OpenAI's), csv (a table), dir (answer files)")
    ] = "jsonl",
) -> None:
    """Write the results so far: OpenAI batch output lines, a CSV table, or a tree of answers."""
    from jobs import batches, export
    from jobs import results as results_mod
    from jobs.db import session_scope

    if format not in ("jsonl", "csv", "dir"):
        raise typer.BadParameter("--format must be jsonl, csv or dir")
    with session_scope() as session:
        batches.get_batch(session, batch_id)
        if format == "csv":
            rows = export.write_csv(session, batch_id, output)
            out.print(f"{rows} rows in {output}")
            return
        if format == "dir":
            files, failed = export.write_tree(session, batch_id, output)
            out.print(
                f"{files} answer files under {output}; {failed} errors in "
                f"{output / export.ERRORS_FILE}"
            )
            return
        errors = errors_path(output, errors)
        done, failed = results_mod.export(session, batch_id, output, errors)
    out.print(f"{done} results in {output}; {failed} errors in {errors}")


@app.command()
def usage(
    by: Annotated[str, typer.Option(help="model, day, key or batch")] = "model",
    since: Annotated[
        str | None, typer.Option(help="only requests finished since (ISO date)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table")] = False,
) -> None:
    """Tokens and cost spent, summed by model, day, key or batch."""
    from datetime import UTC, datetime

    from jobs import usage as usage_mod
    from jobs.db import session_scope
    from jobs.migrate import ensure_schema

    start = None
    if since:
        try:
            start = datetime.fromisoformat(since)
        except ValueError as exc:
            raise typer.BadParameter(f"--since {since!r} is not an ISO date") from exc
        start = start if start.tzinfo else start.replace(tzinfo=UTC)
    ensure_schema()
    with session_scope() as session:
        try:
            rows = usage_mod.summary(session, by, start)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(by, "requests", "input", "cached", "output", "reasoning", "total", "cost")
    for row in rows:
        table.add_row(
            row[by],
            f"{row['requests']:,}",
            *(f"{row[n]:,}" for n in usage_mod.USAGE[:5]),
            f"${row['cost_usd']:.4f}",
        )
    out.print(table)


@app.command()
def cancel(batch_id: str) -> None:
    """Cancel a batch; finished results are kept."""
    from jobs import batches
    from jobs.db import session_scope

    with session_scope() as session:
        batch = batches.cancel(session, batch_id)
    out.print(f"{batch.id}: {batch.status}")


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

    from jobs.migrate import ensure_schema

    ensure_schema()
    uvicorn.run(
        "jobs.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        proxy_headers=True,
        # long polls last up to a minute; a stop should not wait that long for them
        timeout_graceful_shutdown=API_GRACEFUL_STOP_S,
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


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise InputError(str(path), [], 0) from FileNotFoundError(path)
    return path


def main() -> None:
    try:
        app()
    except InputError as exc:
        # plain text, never wrapped: one fault per line, each naming file and line
        if not exc.faults:
            print(f"error: {exc.source}: no such file", file=sys.stderr)
        else:
            print(f"error: {exc}\nNothing was submitted.", file=sys.stderr)
        sys.exit(2)
    except PromptqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
