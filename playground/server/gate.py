"""The gate in front of every route (a plain ASGI middleware): the access rule, sessions, body limits
and timeouts, the login page, and per-route status counting for /metrics.

A plain ASGI middleware rather than FastAPI dependencies or BaseHTTPMiddleware: a rejected request is
answered before its body is read or parsed (no 25 MB upload is buffered just to say 401), it covers
the playground's own routes (Gradio's API, uploads, the live stream) as well as /v1, and streaming
responses pass through untouched, so client disconnects still reach them.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import parse_qs

from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from playground.api.errors import APIError, BodyTooLarge, error_response
from playground.api.metrics import ApiCounters
from playground.server.access import AUTH_COOKIE, SESSION_COOKIE, Access, cookie_header, cookies_of, login_page

COUNTED_PREFIXES = ("/v1", "/health", "/metrics")  # "/v1" also matches "/v1/..."
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UPLOAD_PATH = "/gradio_api/upload"
LOGIN_PATH = "/login"
PUBLIC_PREFIXES = ("/health", "/playground/static/", LOGIN_PATH)
# Gradio features the playground does not use, each a way in: saving any session's state to disk
# (deep links), the server fetching URLs for a caller (file=http..., proxy=), the monitoring page.
CLOSED_PREFIXES = ("/gradio_api/deep_link", "/gradio_api/file=http", "/gradio_api/file=//", "/gradio_api/proxy=",
                   "/monitoring", "/gradio_api/mcp", "/gradio_api/vibe")
MAX_LOGIN_BYTES = 4096


@dataclass(frozen=True)
class BodyLimits:
    """How much a request may send, and how slowly."""

    upload_mb: int = 25  # /v1 bodies (clips in JSON or multipart) and one playground upload
    page_kb: int = 1024  # every other route: Gradio's JSON events carry at most the 20,000-character text
    upload_files: int = 1  # files in one playground upload request (the clip box sends one)
    idle_seconds: float = 30.0  # longest wait for the next piece of a body

    def __post_init__(self) -> None:
        if self.upload_mb < 1 or self.page_kb < 64 or self.upload_files < 1 or self.idle_seconds <= 0:
            raise ValueError("body limits must be positive (page_kb at least 64)")

    def for_path(self, path: str) -> int:
        if path.startswith("/v1/"):
            return self.upload_mb << 20
        if path == UPLOAD_PATH:
            return (self.upload_mb << 20) + (64 << 10)  # the file plus its multipart framing
        return self.page_kb << 10


class Gate:
    def __init__(self, app: ASGIApp, access: Access, limits: BodyLimits, counters: ApiCounters) -> None:
        self.app, self.access, self.limits, self.counters = app, access, limits, counters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        if path.startswith(COUNTED_PREFIXES):
            send = self._counting(scope, send)
        headers = dict(scope.get("headers") or [])
        rejection = self._check_access(path, headers) or self._check_length(path, headers)
        if rejection is None and path.lower().startswith(CLOSED_PREFIXES):
            rejection = APIError(404, "Not found.", code="not_found")
        if rejection is not None:
            await self._reject(scope, rejection)(scope, receive, send)
            return
        if not path.startswith(COUNTED_PREFIXES):
            scope, send = self._with_session(scope, send)
        if path == LOGIN_PATH:
            await self._login(scope, receive, send)
            return
        await self.app(scope, self._limited(path, headers, receive), send)

    # -- access ---------------------------------------------------------------------------------
    def _check_access(self, path: str, headers: dict[bytes, bytes]) -> APIError | None:
        if not self.access.locked or path.startswith(PUBLIC_PREFIXES):
            return None
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if path.startswith(("/v1", "/metrics")):
            ok = self.access.bearer_ok(auth)
        else:
            ok = self.access.page_ok(auth, cookies_of(list(headers.items())))
        if ok:
            return None
        message = ("Incorrect API key provided." if auth else
                   "Missing API key: send it as the header 'Authorization: Bearer <key>'.")
        if not path.startswith(("/v1", "/metrics")):
            message += " In a browser, sign in at /login."
        return APIError(401, message, code="invalid_api_key", type="invalid_request_error",
                        headers={"WWW-Authenticate": "Bearer"})

    def _reject(self, scope: Scope, err: APIError) -> ASGIApp:
        """A browser opening the locked playground goes to the login page; everything else gets JSON."""
        accept = dict(scope.get("headers") or []).get(b"accept", b"")
        if err.status == 401 and scope.get("method") == "GET" and b"text/html" in accept:
            return RedirectResponse(LOGIN_PATH, status_code=303)
        return error_response(err)

    def _with_session(self, scope: Scope, send: Send) -> tuple[Scope, Send]:
        """Give a request without a valid session cookie a new one: in its headers (so the handlers
        see it now) and on its response (so the browser keeps it)."""
        headers = list(scope.get("headers") or [])
        if self.access.session_id(cookies_of(headers).get(SESSION_COOKIE)) is not None:
            return scope, send
        value = self.access.new_session()
        # One Cookie header, the new session last: Starlette reads only the first header, last value wins.
        raw = "; ".join(v.decode("latin-1") for k, v in headers if k == b"cookie")
        headers = [(k, v) for k, v in headers if k != b"cookie"]
        headers.append((b"cookie", f"{raw}; {SESSION_COOKIE}={value}".lstrip("; ").encode("latin-1")))
        set_cookie = cookie_header(SESSION_COOKIE, value, _secure(scope))

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", set_cookie)]}
            await send(message)
        return {**scope, "headers": headers}, send_with_cookie

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "POST":
            body = b""
            limited = self._limited(LOGIN_PATH, {}, receive, MAX_LOGIN_BYTES)
            while (message := await limited())["type"] == "http.request":
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            key = parse_qs(body.decode("utf-8", "replace")).get("key", [""])[0]
            if self.access.key_matches(key):
                response = RedirectResponse("/", status_code=303)
                response.raw_headers.append((b"set-cookie", cookie_header(AUTH_COOKIE, self.access.auth_token(),
                                                                          _secure(scope))))
            else:
                await asyncio.sleep(0.5)  # a wrong key costs the guesser time
                response = HTMLResponse(login_page("That key is not right."), status_code=401)
        elif not self.access.locked:
            response = RedirectResponse("/", status_code=303)
        else:
            response = HTMLResponse(login_page())
        await response(scope, receive, send)

    # -- bodies ---------------------------------------------------------------------------------
    def _check_length(self, path: str, headers: dict[bytes, bytes]) -> APIError | None:
        length = headers.get(b"content-length", b"").decode("latin-1")
        limit = self.limits.for_path(path)
        if length.isdigit() and int(length) > limit:
            return APIError(413, _too_large(limit), code="request_too_large")
        return None

    def _limited(self, path: str, headers: dict[bytes, bytes], receive: Receive,
                 limit: int | None = None) -> Receive:
        """Count body bytes as they arrive (chunked bodies carry no length to check up front), give
        up on a body that stalls, and count the files of a playground upload."""
        limit = self.limits.for_path(path) if limit is None else limit
        parts = _PartCounter(headers, self.limits.upload_files) if path == UPLOAD_PATH else None
        seen, done = 0, False

        async def limited() -> Message:
            nonlocal seen, done
            if done:
                return await receive()  # after the body: a streaming response waits for the disconnect
            try:
                message = await asyncio.wait_for(receive(), self.limits.idle_seconds)
            except TimeoutError:
                raise HTTPException(408, "The request body stalled; send it without pauses.") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                done = not message.get("more_body", False)
                if seen > limit:
                    raise BodyTooLarge(max(1, limit >> 20))
                if parts is not None:
                    parts.feed(message.get("body", b""))
            return message
        return limited

    def _counting(self, scope: Scope, send: Send) -> Send:
        async def counting(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")
                label = getattr(route, "path", None) or "unmatched"
                method = scope.get("method", "")
                self.counters.http_response(method if method in KNOWN_METHODS else "OTHER", label,
                                            message["status"])
            await send(message)
        return counting


class _PartCounter:
    """Counts the parts of a multipart body as it streams by (a boundary may straddle two chunks)."""

    def __init__(self, headers: dict[bytes, bytes], max_files: int) -> None:
        ctype = headers.get(b"content-type", b"").decode("latin-1")
        boundary = ctype.partition("boundary=")[2].split(";")[0].strip().strip('"')
        self.marker = f"--{boundary}".encode() if boundary else b""
        self.max_parts, self.count, self.tail = max_files, 0, b""

    def feed(self, chunk: bytes) -> None:
        if not self.marker:
            return
        data = self.tail + chunk
        self.count += data.count(self.marker)
        self.tail = data[-(len(self.marker) - 1):]
        if self.count - 1 > self.max_parts:  # n parts have n + 1 markers (the last closes the body)
            raise HTTPException(413, f"One upload request may carry at most {self.max_parts} file(s).")


def _too_large(limit: int) -> str:
    size = f"{limit >> 20} MB" if limit >= 1 << 20 else f"{limit >> 10} KB"
    return f"The request body is larger than the server's limit of {size}."


def _secure(scope: Scope) -> bool:
    forwarded = dict(scope.get("headers") or []).get(b"x-forwarded-proto", b"")
    return scope.get("scheme") == "https" or forwarded.split(b",")[0].strip() == b"https"
