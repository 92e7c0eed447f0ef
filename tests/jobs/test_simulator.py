"""The simulated upstream, exercised as the worker and benchmarks see it: a real process."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobs.simulator import SimConfig, SimulatorProcess

pytestmark = pytest.mark.timeout(30)

REPO_ROOT = Path(__file__).resolve().parents[2]
O1_MINI = "o1-mini-2024-09-12"
MODEL = "gpt-4o-mini"
LISTENING_LINE = re.compile(r"^promptq-simulator listening on http://127\.0\.0\.1:(\d+)/v1$")


@pytest.fixture(scope="module")
def shared_simulator() -> Iterator[SimulatorProcess]:
    with SimulatorProcess(hang_s=2) as simulator:
        yield simulator


@pytest.fixture
def sim(shared_simulator: SimulatorProcess) -> Iterator[SimulatorProcess]:
    """The shared simulator, freshly reset, with its start-up config restored afterwards."""
    baseline = shared_simulator.config()
    del baseline["host"], baseline["port"]
    shared_simulator.reset()
    yield shared_simulator
    shared_simulator.configure(**baseline)


@pytest.fixture
def client(sim: SimulatorProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, trust_env=False, timeout=5.0) as http:
        yield http


def tokens_for_messages(*texts: str) -> int:
    return sum(math.ceil(len(text) / 4) + 4 for text in texts)


def expected_reasoning_tokens(prompt: str) -> int:
    digest = hashlib.sha256(prompt.encode()).digest()
    return 64 * (1 + int.from_bytes(digest[:8], "big") % 8)


def respond(client: httpx.Client, prompt: str, model: str = MODEL, **extra: Any) -> httpx.Response:
    return client.post("/responses", json={"model": model, "input": prompt, **extra})


def chat(client: httpx.Client, prompt: str, model: str = MODEL, **extra: Any) -> httpx.Response:
    messages = [{"role": "user", "content": prompt}]
    return client.post("/chat/completions", json={"model": model, "messages": messages, **extra})


def test_it_announces_its_address_first_and_exits_cleanly_on_sigint() -> None:
    argv = [sys.executable, "-m", "jobs.simulator", "--port", "0"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT) as process:
        try:
            assert process.stdout is not None
            match = LISTENING_LINE.match(process.stdout.readline().rstrip("\n"))
            assert match, "the first stdout line must announce the address"
            health = httpx.get(f"http://127.0.0.1:{match[1]}/healthz", trust_env=False)
            assert health.status_code == 200
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=5) == 0
        finally:
            if process.poll() is None:
                process.kill()


def test_the_process_helper_exposes_urls_and_stops_with_exit_code_zero() -> None:
    simulator = SimulatorProcess().start()
    try:
        assert simulator.base_url.endswith("/v1")
        assert simulator.base_url == simulator.root_url + "/v1"
        assert httpx.get(simulator.root_url + "/healthz", trust_env=False).status_code == 200
    finally:
        assert simulator.stop() == 0


def test_a_responses_answer_echoes_its_prompt_with_consistent_usage(client) -> None:
    response = respond(client, "What is 2 + 2?")
    assert response.status_code == 200
    body = response.json()
    answer = "ECHO: What is 2 + 2?"
    assert body["id"].startswith("resp_")
    assert isinstance(body["created_at"], int)
    assert [body["object"], body["model"], body["status"]] == ["response", MODEL, "completed"]
    assert body["output_text"] == answer
    [message] = body["output"]  # no reasoning item for a non-reasoning model
    assert message["type"] == "message"
    assert message["id"].startswith("msg_")
    assert message["content"] == [{"type": "output_text", "text": answer, "annotations": []}]
    usage = body["usage"]
    assert usage["input_tokens"] == tokens_for_messages("What is 2 + 2?")
    assert usage["input_tokens_details"] == {"cached_tokens": 0}
    assert usage["output_tokens"] == math.ceil(len(answer) / 4)
    assert usage["output_tokens_details"] == {"reasoning_tokens": 0}
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_a_responses_input_list_is_read_from_its_messages_text_parts(client) -> None:
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "Hello, "}, {"text": "you"}]},
        {"role": "user", "content": "again"},
    ]
    body = client.post("/responses", json={"model": "gpt-4o", "input": items}).json()
    assert body["output_text"] == "ECHO: Hello, you\nagain"
    assert body["usage"]["input_tokens"] == tokens_for_messages("Hello, you", "again")


def test_a_chat_completion_echoes_its_messages_with_consistent_usage(client) -> None:
    response = chat(client, "Name a colour.")
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    [choice] = body["choices"]
    assert choice == {
        "index": 0,
        "message": {"role": "assistant", "content": "ECHO: Name a colour."},
        "finish_reason": "stop",
    }
    usage = body["usage"]
    assert usage["prompt_tokens"] == tokens_for_messages("Name a colour.")
    assert usage["completion_tokens"] == math.ceil(len("ECHO: Name a colour.") / 4)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 0}


def test_the_echoed_prompt_is_truncated_to_4000_characters(client) -> None:
    body = chat(client, "x" * 5000).json()
    assert body["choices"][0]["message"]["content"] == "ECHO: " + "x" * 4000


def test_embeddings_are_eight_deterministic_floats_per_input(client) -> None:
    request = {"model": "text-embedding-3-small", "input": ["alpha", "beta"]}
    first = client.post("/embeddings", json=request).json()
    second = client.post("/embeddings", json=request).json()
    assert first["object"] == "list"
    assert [item["index"] for item in first["data"]] == [0, 1]
    assert all(len(item["embedding"]) == 8 for item in first["data"])
    assert first["data"][0]["embedding"] != first["data"][1]["embedding"]
    assert first["data"] == second["data"]
    assert first["usage"] == {"prompt_tokens": 3, "total_tokens": 3}  # ceil(5/4) + ceil(4/4)
    single = client.post("/embeddings", json={"model": "m", "input": "alpha"}).json()
    assert single["data"][0]["embedding"] == first["data"][0]["embedding"]


def test_every_answer_carries_a_unique_request_id(client) -> None:
    ids = {respond(client, f"prompt {n}").headers["x-request-id"] for n in range(20)}
    ids.add(respond(client, "#sim:status=500").headers["x-request-id"])
    assert len(ids) == 21
    assert all(re.fullmatch(r"req_[0-9a-f]+", request_id) for request_id in ids)


@pytest.mark.parametrize(
    ("model", "reasons"),
    [(O1_MINI, True), ("o3-mini", True), ("o4-mini", True), ("gpt-5", True)]
    + [("gpt-4o", False), ("gpt-4.1-mini", False), ("claude-3-haiku", False)],
)
def test_only_reasoning_models_spend_reasoning_tokens(client, model, reasons) -> None:
    prompt = f"Think about {model}."
    body = respond(client, prompt, model=model).json()
    reasoning = expected_reasoning_tokens(prompt) if reasons else 0
    items = ["reasoning", "message"] if reasons else ["message"]
    assert [item["type"] for item in body["output"]] == items
    usage = body["usage"]
    assert usage["output_tokens_details"]["reasoning_tokens"] == reasoning
    assert usage["output_tokens"] == math.ceil(len("ECHO: " + prompt) / 4) + reasoning
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    chat_usage = chat(client, prompt, model=model).json()["usage"]
    assert chat_usage["completion_tokens_details"]["reasoning_tokens"] == reasoning


def test_a_repeated_long_prompt_is_served_partly_from_the_cache(client) -> None:
    long_prompt = "The quick brown fox. " * 250  # 5250 chars: 1317 input tokens
    first = chat(client, long_prompt).json()["usage"]
    second = chat(client, long_prompt).json()["usage"]
    assert first["prompt_tokens"] == 1317
    assert first["prompt_tokens_details"]["cached_tokens"] == 0
    assert second["prompt_tokens_details"]["cached_tokens"] == 1280
    short_again = [respond(client, "short").json()["usage"] for _ in range(2)]
    assert [usage["input_tokens_details"]["cached_tokens"] for usage in short_again] == [0, 0]


@pytest.mark.parametrize("param", ["max_tokens", "temperature", "top_p"])
def test_o1_mini_rejects_sampling_parameters(client, param) -> None:
    response = chat(client, "hi", model=O1_MINI, **{param: 1})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert error["code"] == "unsupported_parameter"
    assert param in error["message"]


@pytest.mark.parametrize("role", ["system", "developer"])
def test_o1_mini_rejects_system_and_developer_messages(client, role) -> None:
    messages = [{"role": role, "content": "Be brief."}, {"role": "user", "content": "hi"}]
    response = client.post("/chat/completions", json={"model": O1_MINI, "messages": messages})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("messages[0].role", "unsupported_value")
    assert role in error["message"]
    response = client.post("/responses", json={"model": O1_MINI, "input": messages})
    assert response.json()["error"]["param"] == "input[0].role"
    allowed = chat(client, "hi", model="gpt-4o", max_tokens=5, temperature=0.1)
    assert allowed.status_code == 200


def test_a_body_without_model_or_unparseable_json_gets_400(client) -> None:
    no_model = client.post("/responses", json={"input": "hi"})
    assert no_model.status_code == 400
    assert no_model.json()["error"]["param"] == "model"
    garbage = client.post("/chat/completions", content=b"{not json")
    assert garbage.status_code == 400
    assert garbage.json()["error"]["type"] == "invalid_request_error"


def test_a_status_directive_answers_that_status_in_openais_envelope(sim, client) -> None:
    sim.configure(retry_after_s=3)
    limited = respond(client, "#sim:status=429")
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "3"
    assert limited.headers["retry-after-ms"] == "3000"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    unavailable = respond(client, "#sim:status=503")
    assert (unavailable.status_code, unavailable.json()["error"]["type"]) == (503, "server_error")
    permanent = chat(client, "#sim:status=500 #sim:code=invalid_request")
    assert permanent.status_code == 500
    assert permanent.json()["error"]["code"] == "invalid_request"
    assert respond(client, "#sim:status=500").status_code == 500  # every time
    assert respond(client, "#sim:bogus=1").status_code == 400


def test_a_fail_directive_fails_the_first_attempts_then_succeeds(client) -> None:
    statuses = [respond(client, "#sim:fail=503*2 flaky").status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert respond(client, "#sim:fail=429 once").status_code == 429
    assert respond(client, "#sim:fail=429 once").status_code == 200
    # Attempts are counted per exact body: another body with the same prompt starts afresh.
    assert respond(client, "#sim:fail=429 once", model="gpt-4o").status_code == 429


def test_a_reset_directive_drops_the_connection_without_an_answer(sim, client) -> None:
    with pytest.raises(httpx.TransportError):
        chat(client, "#sim:fail=reset*1 drop me")
    assert chat(client, "#sim:fail=reset*1 drop me").status_code == 200
    stats = sim.stats()
    assert stats["resets"] == 1
    assert stats["by_status"] == {"200": 1}


def test_a_malformed_directive_returns_200_with_a_truncated_body(client) -> None:
    response = respond(client, "#sim:fail=malformed*1 garble")
    assert response.status_code == 200
    assert response.text.startswith('{"id":"resp_')
    with pytest.raises(json.JSONDecodeError):
        response.json()
    assert respond(client, "#sim:fail=malformed*1 garble").json()["status"] == "completed"


def test_a_hang_directive_outlasts_a_short_client_timeout(sim, client) -> None:
    request = {"model": "gpt-4o", "input": "#sim:fail=hang*1 stuck"}
    with pytest.raises(httpx.ReadTimeout):
        client.post("/responses", json=request, timeout=0.5)
    started = time.monotonic()
    assert client.post("/responses", json=request, timeout=0.5).status_code == 200
    assert time.monotonic() - started < 0.5
    # The server stops waiting when the client leaves, and logs nginx's 499 for it.
    assert sorted(entry["status"] for entry in sim.log()) == [200, 499]
    assert sim.stats()["in_flight"] == 0


def test_a_latency_directive_delays_only_its_own_request(client) -> None:
    started = time.monotonic()
    assert respond(client, "#sim:latency_ms=300 slow").status_code == 200
    slow_s = time.monotonic() - started
    started = time.monotonic()
    assert respond(client, "fast").status_code == 200
    fast_s = time.monotonic() - started
    assert slow_s >= 0.3
    assert fast_s < 0.2


def test_require_key_rejects_requests_without_the_bearer_key() -> None:
    with SimulatorProcess(require_key="sk-test") as simulator:
        request = {"model": "gpt-4o", "input": "hi"}
        url = simulator.base_url + "/responses"

        def post(**headers: str) -> httpx.Response:
            return httpx.post(url, json=request, headers=headers, trust_env=False)

        missing = post()
        wrong = post(Authorization="Bearer no")
        right = post(Authorization="Bearer sk-test")
        assert missing.status_code == wrong.status_code == 401
        assert missing.json()["error"]["code"] == "invalid_api_key"
        assert right.status_code == 200
        assert simulator.stats()["by_status"] == {"200": 1, "401": 2}  # controls need no key


def test_stats_measure_concurrency_busy_time_and_work(sim) -> None:
    sim.configure(latency_ms=300)

    async def send_20() -> list[int]:
        async with httpx.AsyncClient(base_url=sim.base_url, trust_env=False) as http:
            requests = [
                http.post("/responses", json={"model": "gpt-4o", "input": f"n={n}"})
                for n in range(20)
            ]
            return [response.status_code for response in await asyncio.gather(*requests)]

    assert asyncio.run(send_20()) == [200] * 20
    stats = sim.stats()
    assert stats["requests_total"] == 20
    assert stats["in_flight"] == 0
    assert stats["max_in_flight"] == 20
    assert stats["by_status"] == {"200": 20}
    assert 0.3 <= stats["busy_s"] < 1.5
    assert 20 * 0.3 <= stats["work_s"] < 20 * 1.5
    assert stats["first_request_at"] <= stats["last_request_at"] <= stats["last_answer_at"]


def test_a_rate_limit_storm_answers_429_until_it_ends(sim, client) -> None:
    sim.configure(rate_limit_for_s=1, retry_after_s=2)
    storm = [respond(client, f"during {n}") for n in range(3)]
    assert {response.status_code for response in storm} == {429}
    assert storm[0].headers["retry-after"] == "2"
    assert storm[0].headers["retry-after-ms"] == "2000"
    time.sleep(1.1)
    assert respond(client, "after").status_code == 200


def test_random_fault_rates_follow_the_seed(sim, client) -> None:
    sim.configure(rate_500=0.3, rate_429=0.2, seed=7)

    def statuses() -> list[int]:
        return [respond(client, f"r{n}").status_code for n in range(200)]

    first = statuses()
    sim.reset()  # reseeds the generator
    assert statuses() == first
    assert 30 <= first.count(500) <= 90
    assert 15 <= first.count(429) <= 65
    assert first.count(200) == 200 - first.count(500) - first.count(429)


def test_configure_rejects_unknown_fields_and_bad_values(sim) -> None:
    with pytest.raises(ValueError, match="unknown field"):
        sim.configure(latency=5)
    with pytest.raises(ValueError, match="rate_500"):
        sim.configure(rate_500=2)
    with pytest.raises(ValueError, match="port"):
        sim.configure(port=1)
    assert sim.configure(jitter_ms=5)["jitter_ms"] == 5.0


def test_the_log_records_each_request_once_with_its_body_hash(sim, client) -> None:
    bodies = [json.dumps({"model": "gpt-4o", "input": f"logged {n}"}).encode() for n in range(3)]
    for body in bodies:
        client.post("/responses", content=body)
    client.post("/chat/completions", content=b"nope")
    log = sim.log()
    assert [entry["path"] for entry in log] == ["/v1/responses"] * 3 + ["/v1/chat/completions"]
    assert [entry["status"] for entry in log] == [200, 200, 200, 400]
    shas = [entry["body_sha"] for entry in log]
    assert shas[:3] == [hashlib.sha256(body).hexdigest() for body in bodies]
    assert all(entry["t_start"] <= entry["t_end"] for entry in log)
    sim.reset()
    assert sim.log() == []
    assert sim.stats()["requests_total"] == 0


def test_simconfig_rejects_rates_that_add_up_past_one() -> None:
    with pytest.raises(ValueError, match="add up"):
        SimConfig(rate_500=0.6, rate_503=0.6)
    with pytest.raises(ValueError, match="latency_ms"):
        SimConfig(latency_ms=-1)
