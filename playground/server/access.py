"""Who a request is: the signed browser session that owns takes and voices, and the one access rule
for the API key.

- **Sessions.** Every browser gets a signed `s2_session` cookie (a random id and its HMAC under the
  server's secret, kept in `data_dir/session.key`, so sessions outlive restarts). Takes and voices
  belong to the session that made them; a forged or missing cookie is simply a new, empty session.
- **The key.** With `--api-key`, everything but `/health`, the login page and the player's static
  files needs it: `/v1` and `/metrics` as `Authorization: Bearer KEY`, the playground as that header
  or as the `s2_auth` cookie the login page sets once the visitor has typed the key.
- **Owners.** The store sees an opaque owner: `s:<session>` for a browser, `api` for the API's
  library (the key holder's, or the open API's), `shared` for everything when the operator starts
  the server with `--shared-library`.
"""
from __future__ import annotations

import hashlib
import hmac
import html
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import cookie_parser

SESSION_COOKIE = "s2_session"
AUTH_COOKIE = "s2_auth"
SECRET_FILE = "session.key"
SESSION_MAX_AGE = 365 * 24 * 3600  # seconds: a visitor's library stays theirs for a year
API_OWNER, SHARED_OWNER = "api", "shared"


def load_secret(data_dir: Path) -> bytes:
    """The server's signing secret, made once (readable by the server's user only)."""
    path = Path(data_dir) / SECRET_FILE
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        secret = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secret)
    if len(secret) < 32:
        raise ValueError(f"{path} is corrupt (shorter than 32 bytes): delete it to make a new one")
    return secret


def cookies_of(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Cookie values of an ASGI header list (the last of a repeated name wins, as in Starlette)."""
    return cookie_parser("; ".join(v.decode("latin-1") for k, v in headers if k == b"cookie"))


@dataclass(frozen=True)
class Access:
    secret: bytes
    api_key: str | None = None
    shared_library: bool = False

    # -- sessions -------------------------------------------------------------------------------
    def _sign(self, text: str) -> str:
        return hmac.new(self.secret, text.encode(), hashlib.sha256).hexdigest()[:32]

    def new_session(self) -> str:
        """A fresh signed session cookie value."""
        sid = secrets.token_urlsafe(18)
        return f"{sid}.{self._sign('session:' + sid)}"

    def session_id(self, cookie: str | None) -> str | None:
        """The session id a cookie value carries, or None when it is missing or forged."""
        sid, _, mac = (cookie or "").partition(".")
        if not sid or len(cookie or "") > 128 or not hmac.compare_digest(mac, self._sign("session:" + sid)):
            return None
        return sid

    def owner(self, cookies: dict[str, str]) -> str:
        """The library a browser request reads and writes."""
        if self.shared_library:
            return SHARED_OWNER
        sid = self.session_id(cookies.get(SESSION_COOKIE))
        # The gate gives every page request a valid session; a caller without one gets a throwaway.
        return f"s:{sid or secrets.token_urlsafe(18)}"

    def api_owner(self) -> str:
        return SHARED_OWNER if self.shared_library else API_OWNER

    # -- the key --------------------------------------------------------------------------------
    @property
    def locked(self) -> bool:
        return self.api_key is not None

    def key_matches(self, key: str) -> bool:
        return self.api_key is not None and hmac.compare_digest(key.encode(), self.api_key.encode())

    def auth_token(self) -> str:
        """The login cookie's value: tied to this key, so changing the key logs everybody out."""
        assert self.api_key is not None
        return self._sign("auth:" + hashlib.sha256(self.api_key.encode()).hexdigest())

    def bearer_ok(self, authorization: str) -> bool:
        scheme, _, key = authorization.partition(" ")
        return scheme.lower() == "bearer" and self.key_matches(key.strip())

    def page_ok(self, authorization: str, cookies: dict[str, str]) -> bool:
        """May this request use the playground? Always without a key; with one, the header or the cookie."""
        if not self.locked:
            return True
        return self.bearer_ok(authorization) or hmac.compare_digest(cookies.get(AUTH_COOKIE, ""), self.auth_token())


def cookie_header(name: str, value: str, secure: bool, max_age: int = SESSION_MAX_AGE) -> bytes:
    """A Set-Cookie value. Over https the cookie is also sent when the page is embedded in another
    site's frame (a Hugging Face Space shows the app in an iframe), partitioned to that embedding."""
    site = "SameSite=None; Secure; Partitioned" if secure else "SameSite=Lax"
    return f"{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; {site}".encode("latin-1")


def login_page(error: str = "") -> str:
    note = f'<p class="err">{html.escape(error)}</p>' if error else ""
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>S2 Pro Playground: sign in</title>
<style>body{{font-family:system-ui,sans-serif;background:#f5f6fa;display:grid;place-items:center;height:100vh;margin:0}}
form{{background:#fff;padding:2rem;border-radius:12px;box-shadow:0 2px 12px #0002;width:min(22rem,90vw)}}
h1{{font-size:1.2rem;margin:0 0 1rem}}input{{width:100%;box-sizing:border-box;padding:.6rem;margin:.5rem 0 1rem;
border:1px solid #ccd;border-radius:6px}}button{{width:100%;padding:.6rem;border:0;border-radius:6px;
background:#4f46e5;color:#fff;font-weight:600}}.err{{color:#b91c1c}}</style></head><body>
<form method="post" action="/login"><h1>S2 Pro Playground</h1><p>This server asks for its access key.</p>{note}
<label for="key">Access key</label><input id="key" name="key" type="password" autocomplete="current-password"
autofocus required maxlength="512"><button type="submit">Sign in</button></form></body></html>"""
