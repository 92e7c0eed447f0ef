"""The HTTP layer alone: which transport keeps 200 calls in flight at the least CPU.

    python bench/transport.py [--requests 3000] [--in-flight 200] [--latency-ms 1000]
        [--jitter-ms 400] [--clients aiohttp,upstream-aiohttp,upstream-httpx]

One process drives the simulator (a separate process) with each client in turn, the same
requests, the same semaphore, a fresh event loop each:

- `aiohttp`: a plain `aiohttp.ClientSession` (TCPConnector(limit=in-flight)), the floor;
- `upstream-aiohttp`: `worker.upstream.UpstreamClient` over `make_transport("aiohttp")`
  (httpx's API over aiohttp, through httpx-aiohttp), what the workers run;
- `upstream-httpx`: the same client over `make_transport("httpx")` (httpx's own pool).

Each reports wall time against the ideal (N x the simulator's measured mean latency / C)
and this process's CPU seconds; the simulator's seed is reset between clients, so every
client meets the same latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from common import MODEL, record

from jobs.simulator import SimulatorProcess
from worker.upstream import UpstreamClient, make_transport

URL_PATH = "/v1/responses"
CLIENTS = ("aiohttp", "upstream-aiohttp", "upstream-httpx")
TIMEOUT_S = 120.0


def bodies(count: int) -> list[bytes]:
    return [
        json.dumps({"model": MODEL, "input": f"Summarise item {i}: {'lorem ipsum ' * 8}"}).encode()
        for i in range(count)
    ]


async def drive(call: Callable[[bytes], Awaitable[Any]], work: list[bytes], in_flight: int) -> int:
    """Every body through `call`, at most `in_flight` at once; returns the failures."""
    slots = asyncio.Semaphore(in_flight)
    failures = 0

    async def one(body: bytes) -> None:
        nonlocal failures
        async with slots:
            try:
                await call(body)
            except Exception:  # noqa: BLE001 - counted and reported, never expected
                failures += 1

    await asyncio.gather(*(one(body) for body in work))
    return failures


async def with_aiohttp(base_url: str, work: list[bytes], in_flight: int) -> int:
    url = base_url.rstrip("/").removesuffix("/v1") + URL_PATH
    headers = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=in_flight),
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
    ) as session:

        async def call(body: bytes) -> Any:
            async with session.post(url, data=body) as response:
                response.raise_for_status()
                return json.loads(await response.read())

        return await drive(call, work, in_flight)


async def with_upstream(kind: str, base_url: str, work: list[bytes], in_flight: int) -> int:
    transport = make_transport(kind, max_connections=in_flight)
    async with UpstreamClient(
        base_url, "sk-bench", timeout_s=TIMEOUT_S, transport=transport
    ) as client:
        return await drive(lambda body: client.call(URL_PATH, body), work, in_flight)


def measure(client: str, base_url: str, work: list[bytes], in_flight: int) -> dict[str, Any]:
    if client == "aiohttp":
        coroutine = with_aiohttp(base_url, work, in_flight)
    else:
        coroutine = with_upstream(client.removeprefix("upstream-"), base_url, work, in_flight)
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = time.process_time()
    started = time.perf_counter()
    failures = asyncio.run(coroutine)
    wall_s = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_before
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "failures": failures,
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "cpu_user_s": usage.ru_utime - usage_before.ru_utime,
        "cpu_sys_s": usage.ru_stime - usage_before.ru_stime,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=1000)
    parser.add_argument("--jitter-ms", type=float, default=400)
    parser.add_argument("--clients", default=",".join(CLIENTS))
    args = parser.parse_args()
    clients = args.clients.split(",")
    if unknown := set(clients) - set(CLIENTS):
        parser.error(f"unknown clients {sorted(unknown)}; known: {', '.join(CLIENTS)}")
    n, c = args.requests, args.in_flight
    nominal_ideal_s = n * (args.latency_ms + args.jitter_ms / 2) / 1000 / c
    work = bodies(n)

    figures: dict[str, Any] = {
        "requests": n,
        "in_flight": c,
        "latency_ms": args.latency_ms,
        "jitter_ms": args.jitter_ms,
        "nominal_ideal_s": round(nominal_ideal_s, 2),
    }
    with SimulatorProcess(latency_ms=args.latency_ms, jitter_ms=args.jitter_ms) as sim:
        for client in clients:
            sim.reset()  # same seed, so the same latencies for every client
            run = measure(client, sim.base_url, work, c)
            stats = sim.stats()
            ideal_s = stats["work_s"] / c  # N x measured mean latency / C
            figures[client] = {
                "wall_s": round(run["wall_s"], 2),
                "ideal_s": round(ideal_s, 2),
                "wall_over_ideal": round(run["wall_s"] / ideal_s, 3),
                "client_cpu_s": round(run["cpu_s"], 2),
                "client_cpu_user_s": round(run["cpu_user_s"], 2),
                "client_cpu_sys_s": round(run["cpu_sys_s"], 2),
                "client_cpu_ms_per_request": round(run["cpu_s"] * 1000 / n, 3),
                "upstream_max_in_flight": stats["max_in_flight"],
                "upstream_busy_ratio": round(stats["work_s"] / (c * stats["busy_s"]), 3),
                "failures": run["failures"] + n - stats["by_status"].get("200", 0),
            }
            print(client, json.dumps(figures[client]), flush=True)
    if "aiohttp" in figures:
        floor = figures["aiohttp"]
        for client in clients:
            f = figures[client]
            f["wall_vs_aiohttp"] = round(f["wall_s"] / floor["wall_s"], 3)
            f["cpu_vs_aiohttp"] = round(f["client_cpu_s"] / max(floor["client_cpu_s"], 1e-9), 2)
    record("transport", figures)


if __name__ == "__main__":
    main()
