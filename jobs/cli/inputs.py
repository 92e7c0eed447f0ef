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
):  # type: ignore[no-untyped-def]
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
        lines = templates.record_lines(tmpl, existing_file(records), model=model, endpoint=url)
    return (lambda: lines), str(template)


def not_before_time(text: str | None):  # type: ignore[no-untyped-def]
    from jobs.schedule import parse_time

    return parse_time(text) if text else None


def errors_path(output: Path, errors: Path | None) -> Path:
    return errors or output.with_name(output.stem + ".errors" + (output.suffix or ".jsonl"))


def existing_file(path: Path) -> Path:
    if not path.is_file():
        raise InputError(str(path), [], 0) from FileNotFoundError(path)
    return path
