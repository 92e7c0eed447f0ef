"""What the batch commands share: their options, and where their request lines come from."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from jobs.errors import InputError

OutputOpt = Annotated[Path, typer.Option("-o", "--output", help="where to write results (JSONL)")]
ErrorsOpt = Annotated[
    Path | None,
    typer.Option("--errors", help="where failed requests go (default: OUTPUT.errors.jsonl)"),
]


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
WindowOpt = Annotated[
    str | None, typer.Option(help="send only inside this daily window, HH:MM-HH:MM local time")
]
PriorityOpt = Annotated[str, typer.Option(help="interactive (goes before bulk work) or bulk")]
MaxCostOpt = Annotated[
    float | None,
    typer.Option(
        "--max-cost", help="stop the batch at this cost in USD (what is left ends budget_exceeded)"
    ),
]
MaxTokensOpt = Annotated[
    int | None, typer.Option("--max-tokens", help="stop the batch at this many tokens")
]
WebhookOpt = Annotated[
    str | None,
    typer.Option(help="POST the Batch object here at its end, signed with PROMPTQ_WEBHOOK_SECRET"),
]
ReuseOpt = Annotated[
    bool,
    typer.Option(help="answer requests identical to earlier successes from their results, free"),
]
EndpointOpt = Annotated[
    str | None, typer.Option(help="the batch's endpoint (default: the lines' url)")
]


def request_source(
    input: Path | None,
    template: Path | None,
    files: list[str] | None,
    records: Path | None,
    model: str | None,
    endpoint: str | None,
):
    """The request lines, from a JSONL file or built from a template; and their name."""
    from jobs import submit, templates

    if template is None:
        if input is None or files or records:
            raise typer.BadParameter("give INPUT.jsonl, or --template with --files or --records")
        return submit.open_lines(existing_file(input)), str(input)
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
        assert records is not None  # checked above: exactly one of files and records
        lines = templates.record_lines(tmpl, existing_file(records), model=model, endpoint=url)
    return (lambda: lines), str(template)


def policy(
    not_before: str | None,
    window: str | None,
    priority: str,
    max_cost: float | None,
    max_tokens: int | None,
    webhook: str | None,
    reuse: bool,
):
    """The batch's Policy from its options; a bad one is refused before anything is stored."""
    from jobs.models import Priority
    from jobs.policy import Policy
    from jobs.schedule import Window, parse_time

    if priority not in tuple(Priority):
        raise typer.BadParameter(
            f"--priority must be interactive or bulk, not {priority!r}", param_hint="--priority"
        )
    return Policy(
        not_before=parse_time(not_before) if not_before else None,
        window=Window.parse(window) if window else None,
        priority=Priority(priority),
        max_cost_usd=max_cost,
        max_tokens=max_tokens,
        webhook_url=webhook,
        reuse=reuse,
    )


def describe(policy) -> list[str]:
    """What a policy will do, said once at submission."""
    said = []
    if policy.not_before is not None:
        said.append(
            f"Nothing is sent before {policy.not_before.astimezone():%Y-%m-%d %H:%M:%S %Z}."
        )
    if policy.window is not None:
        said.append(f"Requests are sent only between {policy.window} (local time) each day.")
    if policy.max_cost_usd is not None or policy.max_tokens is not None:
        limits = []
        if policy.max_cost_usd is not None:
            limits.append(f"${policy.max_cost_usd:g}")
        if policy.max_tokens is not None:
            limits.append(f"{policy.max_tokens:,} tokens")
        said.append(f"Budget: {' and '.join(limits)}; what is left then ends budget_exceeded.")
    return said


def errors_path(output: Path, errors: Path | None) -> Path:
    return errors or output.with_name(output.stem + ".errors" + (output.suffix or ".jsonl"))


def existing_file(path: Path) -> Path:
    if not path.is_file():
        raise InputError(str(path), [], 0) from FileNotFoundError(path)
    return path
