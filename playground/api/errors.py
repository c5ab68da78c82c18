"""OpenAI-shaped errors for the API: `{"error": {"message", "type", "param", "code"}}` with a real 4xx/5xx.

Route code raises `APIError`; the handlers installed here also turn FastAPI's validation errors (its
default is a 422 with a different shape), Starlette's HTTP errors (404, 405, 413) and unexpected
exceptions into the same shape, so a client only ever has to parse one kind of error body.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from engine import EngineBusy, EngineUnhealthy

log = logging.getLogger(__name__)

UNHEALTHY_RETRY_SECONDS = 30  # a supervisor restarts the process in about this long
_TYPES = {401: "authentication_error", 404: "not_found_error", 409: "conflict_error", 413: "invalid_request_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        self.headers = headers


def brief(value: object, limit: int = 60) -> str:
    """`value` quoted for an error message, cut short: a message never echoes a huge input back."""
    text = str(value)
    return repr(text if len(text) <= limit else text[:limit] + "…")


def too_large_message(limit_mb: int) -> str:
    return f"The request body is larger than the server's limit of {limit_mb} MB."


class BodyTooLarge(HTTPException):
    """Raised while the body is read. An HTTPException, because FastAPI re-raises those from its body
    parsing untouched (anything else becomes a generic 400)."""

    def __init__(self, limit_mb: int) -> None:
        super().__init__(413, too_large_message(limit_mb))


def error_response(err: APIError) -> JSONResponse:
    body = {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}
    return JSONResponse(body, status_code=err.status, headers=err.headers)


def _validation_message(error: dict[str, Any]) -> tuple[str, str | None]:
    """A readable message and the offending field for the first pydantic/FastAPI validation error."""
    loc = [str(part) for part in error.get("loc", ()) if part != "body"]
    kind = error.get("type", "")
    if kind == "json_invalid":
        detail = (error.get("ctx") or {}).get("error", "malformed JSON")
        return f"The request body is not valid JSON: {detail}.", None
    param = ".".join(loc) or None
    if kind == "missing" and param is None:
        return "The request body is missing: send a JSON object.", None
    if kind == "extra_forbidden":
        return f"Unknown parameter {param!r}: this server does not support it.", param
    if kind == "missing":
        return f"Missing required parameter {param!r}.", param
    where = f"Invalid value for {param!r}: " if param else "Invalid request: "
    return where + str(error.get("msg", "invalid value")), param


async def _on_api_error(request: Request, exc: APIError) -> JSONResponse:
    return error_response(exc)


async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    message, param = _validation_message(exc.errors()[0] if exc.errors() else {})
    return error_response(APIError(400, message, param=param, code="invalid_value" if param else None))


async def _on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status_code)
    headers = dict(exc.headers) if exc.headers else None
    return error_response(APIError(exc.status_code, str(exc.detail), code=code, headers=headers))


async def _on_busy(request: Request, exc: EngineBusy) -> JSONResponse:
    retry = str(max(1, math.ceil(exc.retry_after_s)))
    return error_response(APIError(503, f"The server is busy: {exc.waiting} requests are already waiting; retry in "
                                   f"{retry} s.", code="server_busy", headers={"Retry-After": retry}))


async def _on_unhealthy(request: Request, exc: EngineUnhealthy) -> JSONResponse:
    return error_response(APIError(503, f"The engine stopped serving and the server is restarting ({exc}).",
                                   code="engine_unhealthy", headers={"Retry-After": str(UNHEALTHY_RETRY_SECONDS)}))


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(APIError(500, f"Internal server error ({type(exc).__name__}); see the server log.",
                                   code="internal_error"))


def install_handlers(app: FastAPI) -> None:
    handlers: list[tuple[type[Exception], Callable[[Request, Any], Awaitable[JSONResponse]]]] = [
        (APIError, _on_api_error), (RequestValidationError, _on_validation_error), (HTTPException, _on_http_error),
        (EngineBusy, _on_busy), (EngineUnhealthy, _on_unhealthy)]
    for kind, handler in handlers:
        app.add_exception_handler(kind, handler)  # pyright: ignore[reportArgumentType] (Starlette types it loosely)
    app.add_exception_handler(Exception, _on_unexpected)
