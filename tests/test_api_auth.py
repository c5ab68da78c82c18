"""Optional bearer-key auth: a server started with --api-key answers /v1 only with that key."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.api_helpers import FRAME, assert_openai_error, client_for, pcm_samples
from tests.server import Server

pytest_plugins = ("tests.api_fixtures",)
KEY = "sk-test-secret"


@pytest.fixture(scope="module")
def locked_server(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tiny_dir, tmp_path_factory.mktemp("locked-data"), "--api-key", KEY).start()
    yield server
    server.stop()


@pytest.mark.parametrize("headers, match", [
    ({}, "missing api key"), ({"Authorization": "Bearer wrong"}, "incorrect api key"),
    ({"Authorization": KEY}, "incorrect api key"), ({"Authorization": f"Basic {KEY}"}, "incorrect api key"),
])
@pytest.mark.parametrize("method, path", [("GET", "/v1/models"), ("POST", "/v1/audio/speech"),
                                          ("GET", "/v1/voices"), ("DELETE", "/v1/voices/x"),
                                          ("GET", "/v1/no-such-route")])
def test_missing_or_wrong_key_is_401(locked_server: Server, method: str, path: str, headers: dict,
                                     match: str) -> None:
    r = httpx.request(method, locked_server.url + path, headers=headers, json={}, timeout=30)
    error = assert_openai_error(r, 401, match=match)
    assert error["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"


def test_right_key_works_and_health_stays_open(locked_server: Server) -> None:
    assert httpx.get(locked_server.url + "/health", timeout=30).json()["status"] == "ok"
    client = client_for(locked_server, api_key=KEY)
    assert [m.id for m in client.models.list()] == ["s2-pro"]
    audio = client.audio.speech.create(model="s2-pro", voice="default", input="Locked.", response_format="pcm",
                                       extra_body={"max_frames": 4, "seed": 1})
    assert len(pcm_samples(audio.content)) == 4 * FRAME
    with pytest.raises(openai.AuthenticationError):
        client_for(locked_server, api_key="wrong").models.list()


def test_no_key_configured_means_open(api_server: Server) -> None:
    assert httpx.get(api_server.url + "/v1/models", timeout=30).status_code == 200
    assert client_for(api_server, api_key="anything").models.list().data[0].id == "s2-pro"

