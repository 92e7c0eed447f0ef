"""`python -m jobs`: the `promptq` command."""

from jobs.cli import main

main()
