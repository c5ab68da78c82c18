"""A visitor of the playground's own API, over plain HTTP as a script would be (no browser): uploads,
named events through `/gradio_api/call/<name>`, and raw queue joins with any event data, each client
with its own cookie jar (its own session)."""
from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import httpx


class GradioVisitor:
    def __init__(self, url: str, timeout: float = 60.0, **client_args: Any) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=timeout, **client_args)
        self.http.get("/")  # the page load gives this visitor its session cookie

    def close(self) -> None:
        self.http.close()

    def upload(self, path: Path) -> dict[str, Any]:
        """Upload a file as the clip box does; the FileData the events take."""
        with path.open("rb") as f:
            r = self.http.post("/gradio_api/upload", files={"files": (path.name, f, "audio/wav")})
        r.raise_for_status()
        return file_data(r.json()[0])

    def call(self, api_name: str, *data: Any) -> tuple[str, Any]:
        """("complete", outputs) or ("error", message) of one named event."""
        r = self.http.post(f"/gradio_api/call/{api_name}", json={"data": list(data)})
        r.raise_for_status()
        event_id = r.json()["event_id"]
        return _last_event(self.http, f"/gradio_api/call/{api_name}/{event_id}")

    def join(self, api_name: str, data: list[Any], event_data: dict[str, Any] | None = None) -> tuple[str, Any]:
        """Run the event named `api_name` through the queue as the page does, with any event data
        (what a forged table click sends)."""
        config = self.http.get("/config").json()
        dep = next(d for d in config["dependencies"] if d.get("api_name") == api_name)
        session = secrets.token_hex(8)
        body = {"data": data, "event_data": event_data, "fn_index": dep["id"], "session_hash": session,
                "trigger_id": dep["targets"][0][0] if dep["targets"] else None}
        self.http.post("/gradio_api/queue/join", json=body).raise_for_status()
        with self.http.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as s:
            for line in s.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    out = msg.get("output") or {}
                    if msg.get("success"):
                        return "complete", out.get("data")
                    return "error", out.get("error")
        raise AssertionError("the queue closed without completing the event")


def file_data(path: str) -> dict[str, Any]:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def _last_event(http: httpx.Client, path: str) -> tuple[str, Any]:
    kind, payload = "", None
    with http.stream("GET", path) as s:
        for line in s.iter_lines():
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:") and kind in ("complete", "error"):
                payload = json.loads(line[5:])
                if kind == "error" and isinstance(payload, dict):
                    payload = payload.get("error")
                if kind == "complete" or payload is not None:
                    return kind, payload
    return kind, payload


def choices(update: dict[str, Any]) -> list[str]:
    """The values of a dropdown update's choices."""
    return [value for _, value in update.get("choices", [])]
