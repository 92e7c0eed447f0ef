"""`python -m jobs.simulator`: run the simulated upstream until SIGTERM or SIGINT."""

from jobs.simulator.server import main

if __name__ == "__main__":
    raise SystemExit(main())
