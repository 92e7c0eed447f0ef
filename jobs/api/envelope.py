"""OpenAI's error envelope, as a schema for the OpenAPI document and as a response body."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error the API answers: `{"error": {"message", "type", "param", "code"}}`."""

    error: ErrorBody


def error_content(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


_MEANING = {
    400: "Invalid request",
    401: "No API key, or an unknown or revoked one",
    404: "No such object, or another owner's",
    409: "The object's state forbids this",
    413: "The upload is over the size limit",
    422: "The request does not match this schema",
    503: "A service promptq needs is unavailable",
}


def documented(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: these error codes, each in the envelope."""
    return {code: {"model": ErrorResponse, "description": _MEANING[code]} for code in codes}


def list_object(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """OpenAI's paged list: `data`, `first_id`, `last_id`, `has_more`."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
