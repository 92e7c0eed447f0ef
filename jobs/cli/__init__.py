"""The `promptq` command line: thin commands over submit, batches, results and the deployment.

app.py       the Typer app, consoles, and `main` (errors -> exit codes)
inputs.py    options and request sources shared by the batch commands
batches.py   run, submit, status, watch, results, usage, cancel
services.py  worker, api, simulator, keys, db
"""

from jobs.cli.app import main

__all__ = ["main"]
