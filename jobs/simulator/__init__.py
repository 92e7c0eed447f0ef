"""A simulated OpenAI-compatible upstream (CometAPI-like) for promptq's tests and benchmarks.

config.py   SimConfig: latency, fault rates, API key; the command-line flags
answers.py  prompt text, o1-mini rules, usage and the bodies of each endpoint
faults.py   `#sim:` directives in prompts and faults drawn at random rates
stats.py    counters, concurrency integrals and the request log behind /_sim
server.py   the aiohttp application, build_app(), serve() and main()
process.py  SimulatorProcess: the server as a child process, with its controls
"""

from jobs.simulator.config import SimConfig
from jobs.simulator.process import SimulatorProcess
from jobs.simulator.server import build_app, main

__all__ = ["SimConfig", "SimulatorProcess", "build_app", "main"]
