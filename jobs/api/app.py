"""The FastAPI application, built by `create_app()`; every error leaves in OpenAI's envelope.

Domain errors become HTTP answers here and nowhere else (`STATUS`): routes raise
jobs.errors' classes and never build an error response themselves.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text
from starlette.exceptions import HTTPException
from starlette.requests import Request

from jobs import metrics
from jobs.api import batches, files, jobs
from jobs.api.envelope import documented, error_content
from jobs.db import session_scope
from jobs.errors import (
    ConflictError,
    InputError,
    InvalidRequestError,
    NotFoundError,
    PromptqError,
    ServiceError,
    TooLargeError,
    UnauthorizedError,
)

# domain error -> (HTTP status, OpenAI error type, default code); the most specific class wins
STATUS: dict[type[PromptqError], tuple[int, str, str | None]] = {
    TooLargeError: (413, "invalid_request_error", "file_too_large"),
    InvalidRequestError: (400, "invalid_request_error", None),
    InputError: (400, "invalid_request_error", "invalid_input"),
    UnauthorizedError: (401, "invalid_request_error", "invalid_api_key"),
    NotFoundError: (404, "invalid_request_error", "not_found"),
    ConflictError: (409, "invalid_request_error", "conflict"),
    ServiceError: (503, "server_error", "service_unavailable"),
}

DESCRIPTION = """\
OpenAI's Files and Batches API, served by promptq: point the official `openai` SDK here
with only `base_url` and `api_key` set. Every `/v1` route needs
`Authorization: Bearer <key>` (`promptq keys create NAME`); a key sees only its owner's
files, batches and jobs. promptq's extensions: completion windows `1h` and `10m`,
`GET /v1/batches/{id}/results` (results while a batch runs), and `/v1/jobs` (single requests).
"""


def create_app() -> FastAPI:
    """A new application; builds nothing else (settings and engines come on first use)."""
    app = FastAPI(
        title="promptq",
        summary="A self-hosted batch service for LLM prompts, speaking OpenAI's Batch API.",
        description=DESCRIPTION,
        version="0.1.0",
        docs_url="/docs",
        openapi_url="/openapi.json",
        redoc_url=None,
    )
    app.add_exception_handler(PromptqError, _domain_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _server_error)
    app.include_router(files.router)
    app.include_router(batches.router)
    app.include_router(jobs.router)
    app.add_api_route(
        "/healthz",
        healthz,
        methods=["GET"],
        tags=["health"],
        responses=documented(503),
        summary="Liveness and database reachability; needs no key",
    )
    app.add_api_route(
        "/metrics",
        metrics.scrape,
        methods=["GET"],
        tags=["health"],
        response_class=Response,  # the 200's media type is below; errors stay JSON
        responses={
            200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
            **documented(503),
        },
        summary="The fleet in Prometheus' text format; needs no key",
    )
    return app


def healthz() -> dict[str, str]:
    try:
        with session_scope() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        raise ServiceError(f"the database is unreachable: {type(exc).__name__}") from exc
    return {"status": "ok"}


def http_status(exc: PromptqError) -> tuple[int, str, str | None]:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500, "server_error", None


def _domain_error(_request: Request, exc: PromptqError) -> JSONResponse:
    status, type_, code = http_status(exc)
    param: str | None = None
    message = str(exc)
    if isinstance(exc, InvalidRequestError):
        param, code = exc.param, exc.code or code
    elif isinstance(exc, InputError) and exc.faults:
        code = exc.faults[0].code
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_content(message, type_, param, code), status, headers=headers)


def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    errors: list[Any] = list(exc.errors())
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = list(first.get("loc", ()))
    if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
        loc = loc[1:]
    param = ".".join(str(part) for part in loc) or None
    message = f"{param}: {first['msg']}" if param else str(first["msg"])
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return JSONResponse(
        error_content(message, "invalid_request_error", param, "invalid_value"), 422
    )


def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    code = {404: "unknown_url", 405: "method_not_allowed"}.get(exc.status_code)
    headers = dict(exc.headers or {})
    if exc.status_code == 405 and (allowed := _allowed_methods(request)):
        # Starlette names the methods of the first route on the path; a path has several
        headers["Allow"] = ", ".join(allowed)
    return JSONResponse(
        error_content(str(exc.detail), "invalid_request_error", None, code),
        exc.status_code,
        headers=headers or None,
    )


def _allowed_methods(request: Request) -> list[str]:
    """Every method the OpenAPI document lists for the request's path."""
    methods: set[str] = set()
    for template, operations in request.app.openapi()["paths"].items():
        pattern = "/".join(
            "[^/]+" if part.startswith("{") else re.escape(part) for part in template.split("/")
        )
        if re.fullmatch(pattern, request.url.path):
            methods.update(method.upper() for method in operations)
    return sorted(methods)


def _server_error(_request: Request, _exc: Exception) -> JSONResponse:
    # Starlette re-raises the exception after this answer, so the server logs it
    return JSONResponse(error_content("internal server error", "server_error", None, None), 500)
