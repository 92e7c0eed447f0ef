"""The batch commands: run, submit, status, watch, results, usage, cancel."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from jobs.cli.app import app, err, out
from jobs.cli.inputs import (
    EndpointOpt,
    ErrorsOpt,
    FilesOpt,
    InputArg,
    MaxCostOpt,
    MaxTokensOpt,
    ModelOpt,
    NotBeforeOpt,
    OutputOpt,
    PriorityOpt,
    RecordsOpt,
    ReuseOpt,
    TemplateOpt,
    WebhookOpt,
    WindowOpt,
    describe,
    errors_path,
    policy,
    request_source,
)


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
    window: WindowOpt = None,
    priority: PriorityOpt = "bulk",
    max_cost: MaxCostOpt = None,
    max_tokens: MaxTokensOpt = None,
    webhook: WebhookOpt = None,
    reuse: ReuseOpt = False,
) -> None:
    """Run a whole batch on this machine: starts what it needs, shows progress, writes results."""
    from jobs import batches, results, validate
    from jobs.db import session_scope
    from jobs.migrate import ensure_schema
    from jobs.settings import get_settings

    settings = get_settings()
    source, name = request_source(input, template, files, records, model, endpoint)
    scan = validate.check(source(), name=name, endpoint=endpoint)
    plan = policy(not_before, window, priority, max_cost, max_tokens, webhook, reuse)
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
        for line in describe(plan):
            err.print(line)
        final, batch_id = _run_deployment(settings, workers, fresh, source, name, scan, plan)
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


def _run_deployment(settings, workers, fresh, source, name, scan, plan):
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
                batch_id = submit.create_batch(source, name=name, scan=scan, policy=plan).id
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
    window: WindowOpt = None,
    priority: PriorityOpt = "bulk",
    max_cost: MaxCostOpt = None,
    max_tokens: MaxTokensOpt = None,
    webhook: WebhookOpt = None,
    reuse: ReuseOpt = False,
) -> None:
    """Queue a batch; prints its id on the last line."""
    from jobs import progress, submit, validate
    from jobs.migrate import ensure_schema

    source, name = request_source(input, template, files, records, model, endpoint)
    scan = validate.check(source(), name=name, endpoint=endpoint)  # before touching state
    plan = policy(not_before, window, priority, max_cost, max_tokens, webhook, reuse)
    ensure_schema()
    batch = submit.create_batch(
        source, name=name, completion_window=completion_window, scan=scan, policy=plan
    )
    for line in describe(plan):
        err.print(line)
    reused = batch.request_completed if plan.reuse else 0
    err.print(
        f"Queued {batch.request_total - reused} requests"
        + (f"; {reused} answered from earlier results." if reused else ".")
    )
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
    from jobs.db import read_scope

    with read_scope() as session:
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
    if runs := _policy_line(batch):
        rows.append(("runs", runs))
    for entry in (obj["errors"] or {}).get("data", [])[:5]:
        where = f"line {entry['line']}: " if entry.get("line") else ""
        rows.append(("error", f"{where}{entry['code']}: {entry['message']}"))
    rows.append(("upstream", _limits_line()))
    for key, value in rows:
        table.add_row(f"[bold]{key}", str(value))
    out.print(table)


def _policy_line(batch) -> str:
    """How the batch runs, when it was given more than the defaults."""
    parts = [f"priority {batch.priority}"]
    if batch.window:
        clock = batch.window_tz or f"UTC{batch.window_utc_offset_min or 0:+d} min"
        parts.append(f"window {batch.window} ({clock})")
    if batch.max_cost_usd is not None:
        parts.append(f"budget ${batch.max_cost_usd:g}")
    if batch.max_tokens is not None:
        parts.append(f"budget {batch.max_tokens:,} tokens")
    if batch.webhook_url:
        parts.append(f"webhook {batch.webhook_url}")
    if batch.reuse:
        parts.append("reusing earlier results")
    return ", ".join(parts)


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
    from jobs.db import read_scope
    from jobs.migrate import ensure_schema

    start = None
    if since:
        try:
            start = datetime.fromisoformat(since)
        except ValueError as exc:
            raise typer.BadParameter(f"--since {since!r} is not an ISO date") from exc
        start = start if start.tzinfo else start.replace(tzinfo=UTC)
    ensure_schema()
    with read_scope() as session:
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
