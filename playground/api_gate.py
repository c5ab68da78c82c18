"""The gate in front of the API routes (a plain ASGI middleware): bearer-key auth and the body-size
limit for /v1, and per-route status counting for /metrics.

A plain ASGI middleware rather than FastAPI dependencies or BaseHTTPMiddleware: a rejected request
is answered before its body is read or parsed (no 25 MB upload is buffered just to say 401), and
streaming responses pass through untouched, so client disconnects still reach them.
"""
from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from playground.api_errors import APIError, BodyTooLarge, error_response, too_large_message
from playground.api_metrics import ApiCounters

COUNTED_PREFIXES = ("/v1/", "/health", "/metrics")


class ApiGate:
    def __init__(self, app: ASGIApp, api_key: str | None, max_body_mb: int, counters: ApiCounters) -> None:
        self.app, self.api_key, self.max_body_mb, self.counters = app, api_key, max_body_mb, counters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not path.startswith(COUNTED_PREFIXES):
            await self.app(scope, receive, send)
            return
        send = self._counting(scope, send)
        if path.startswith("/v1/"):
            rejection = self._check_key(scope) or self._check_length(scope)
            if rejection is not None:
                await error_response(rejection)(scope, receive, send)
                return
            receive = self._limited(receive)
        await self.app(scope, receive, send)

    def _check_key(self, scope: Scope) -> APIError | None:
        if self.api_key is None:
            return None
        headers = dict(scope.get("headers") or [])
        auth = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, key = auth.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(key.strip().encode(), self.api_key.encode()):
            return None
        message = ("Incorrect API key provided." if auth else
                   "Missing API key: send it as the header 'Authorization: Bearer <key>'.")
        return APIError(401, message, code="invalid_api_key", type="invalid_request_error",
                        headers={"WWW-Authenticate": "Bearer"})

    def _check_length(self, scope: Scope) -> APIError | None:
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"").decode("latin-1")
        if length.isdigit() and int(length) > self.max_body_mb << 20:
            return APIError(413, too_large_message(self.max_body_mb), code="request_too_large")
        return None

    def _limited(self, receive: Receive) -> Receive:
        """Count body bytes as they arrive: chunked uploads carry no content-length to check up front."""
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_mb << 20:
                    raise BodyTooLarge(self.max_body_mb)
            return message
        return limited

    def _counting(self, scope: Scope, send: Send) -> Send:
        async def counting(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")
                label = getattr(route, "path", None) or "unmatched"
                self.counters.http_response(scope.get("method", ""), label, message["status"])
            await send(message)
        return counting
