"""The `promptq` Typer app, its consoles, and the entry point that maps errors to exit codes."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from jobs.errors import InputError, InvalidRequestError, PromptqError

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


def main() -> None:
    from jobs.cli import batches, services  # noqa: F401 - registers the commands

    try:
        app()
    except InputError as exc:
        # plain text, never wrapped: one fault per line, each naming file and line
        if not exc.faults:
            print(f"error: {exc.source}: no such file", file=sys.stderr)
        else:
            print(f"error: {exc}\nNothing was submitted.", file=sys.stderr)
        sys.exit(2)
    except InvalidRequestError as exc:  # a bad option: nothing was touched
        print(f"error: {exc}\nNothing was submitted.", file=sys.stderr)
        sys.exit(2)
    except PromptqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
