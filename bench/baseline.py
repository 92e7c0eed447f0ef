"""The user's alternative: a plain asyncio + aiohttp script, no persistence.

    python bench/baseline.py IN.jsonl OUT.jsonl --base-url URL [--max-in-flight 200]

The shape of OpenAI's cookbook `api_request_parallel_processor.py`: one process, one
aiohttp session, lines read lazily and started as a semaphore allows, a result line
appended as each answer arrives, failed calls retried a few times. Two changes make it
the strongest fair opponent: the connector's limit is the semaphore's (aiohttp's default
of 100 connections would cap it below C=200), and the output file stays open.
`run()` is what the other benches call, in their own invocation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

MAX_ATTEMPTS = 5
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class BaselineRun:
    """What one run did: counts, wall time and this process's CPU time."""

    requests: int
    succeeded: int
    failed: int
    wall_s: float
    cpu_s: float


async def process_file(
    requests_path: Path,
    results_path: Path,
    *,
    base_url: str,
    api_key: str,
    max_in_flight: int,
    timeout_s: float = 600.0,
) -> tuple[int, int, int]:
    """Send every line of `requests_path`; returns (requests, succeeded, failed)."""
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    base = base_url.rstrip("/").removesuffix("/v1")
    slots = asyncio.Semaphore(max_in_flight)
    tasks: set[asyncio.Task[None]] = set()
    counts = {"requests": 0, "succeeded": 0, "failed": 0}
    connector = aiohttp.TCPConnector(limit=max_in_flight)
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async with aiohttp.ClientSession(
        connector=connector, headers=headers, timeout=timeout
    ) as session:
        with results_path.open("w") as out:

            async def call(line: dict[str, Any]) -> None:
                try:
                    url = base + line["url"]
                    payload = json.dumps(line["body"]).encode()
                    for attempt in range(1, MAX_ATTEMPTS + 1):
                        try:
                            async with session.post(url, data=payload) as response:
                                raw = await response.read()
                                status = response.status
                            if status in RETRY_STATUSES and attempt < MAX_ATTEMPTS:
                                continue
                            body = json.loads(raw)
                        except (aiohttp.ClientError, TimeoutError, ValueError):
                            if attempt < MAX_ATTEMPTS:
                                continue
                            status, body = 0, None
                        break
                    result = {
                        "custom_id": line["custom_id"],
                        "response": {"status_code": status, "body": body},
                    }
                    out.write(json.dumps(result) + "\n")
                    counts["succeeded" if 200 <= status < 300 else "failed"] += 1
                finally:
                    slots.release()

            with requests_path.open() as lines:
                for text in lines:
                    await slots.acquire()
                    counts["requests"] += 1
                    task = asyncio.create_task(call(json.loads(text)))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)  # the ones not yet done
    return counts["requests"], counts["succeeded"], counts["failed"]


def run(
    requests_path: Path,
    results_path: Path,
    *,
    base_url: str,
    api_key: str = "sk-bench",
    max_in_flight: int = 200,
) -> BaselineRun:
    """Run the script in this process (its own event loop); time it and its CPU."""
    cpu_started = time.process_time()
    started = time.perf_counter()
    requests, succeeded, failed = asyncio.run(
        process_file(
            requests_path,
            results_path,
            base_url=base_url,
            api_key=api_key,
            max_in_flight=max_in_flight,
        )
    )
    return BaselineRun(
        requests=requests,
        succeeded=succeeded,
        failed=failed,
        wall_s=time.perf_counter() - started,
        cpu_s=time.process_time() - cpu_started,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("requests", type=Path)
    parser.add_argument("results", type=Path)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", default=os.environ.get("COMETAPI_API_KEY", "sk-bench"))
    parser.add_argument("--max-in-flight", type=int, default=200)
    args = parser.parse_args()
    outcome = run(
        args.requests,
        args.results,
        base_url=args.base_url,
        api_key=args.api_key,
        max_in_flight=args.max_in_flight,
    )
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({**asdict(outcome), "max_rss_mb": round(usage.ru_maxrss / 1024, 1)}))


if __name__ == "__main__":
    main()
