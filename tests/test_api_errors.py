"""Every bad input gets the right 4xx and OpenAI's error body; nothing reads a client-named path."""
from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.api_helpers import CLONE_TEXT, assert_openai_error, espeak_clip, speech
from tests.server import Server

pytest_plugins = ("tests.api_fixtures",)


def wav_bytes(samples: np.ndarray, rate: int = 22050) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def noise(seconds: float) -> bytes:
    return wav_bytes((np.random.default_rng(0).standard_normal(int(22050 * seconds)) * 0.2).astype(np.float32))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize("body, status, param, match", [
    ({"input": ""}, 400, "input", "empty"),
    ({"input": "   \n "}, 400, "input", "empty"),
    ({"input": "a" * 20_001}, 400, "input", "limit is 20000"),
    ({"response_format": "ogg"}, 400, "response_format", "'wav'"),
    ({"model": "gpt-5"}, 404, "model", "does not exist"),
    ({"voice": "nobody"}, 404, "voice", "no voice"),
    ({"voice": {"id": "voice_0123456789abcdef"}}, 404, "voice", "no voice"),
    ({"speed": 0.1}, 400, "speed", "greater than or equal to 0.25"),
    ({"speed": 4.5}, 400, "speed", "less than or equal to 4"),
    ({"temperature": 2.5}, 400, "temperature", "temperature must be in"),
    ({"top_p": 0}, 400, "top_p", "top_p must be in"),
    ({"top_k": 0}, 400, "top_k", "top_k must be in"),
    ({"seed": -1}, 400, "seed", "seed must be in"),
    ({"max_frames": 0}, 400, "max_frames", "max_frames must be in"),
    ({"max_frames": "many"}, 400, "max_frames", "valid integer"),
    ({"chunk_length": 10}, 400, "chunk_length", "chunk_length must be"),
    ({"ras": "sometimes"}, 400, "ras", "valid boolean"),
    ({"stream_format": "websocket"}, 400, "stream_format", "'audio' or 'sse'"),
    ({"instructions": "[laugh] loudly"}, 400, "instructions", "square brackets"),
    ({"instructions": " "}, 400, "instructions", "1 to 500"),
    ({"audio_path": "/etc/passwd"}, 400, "audio_path", "unknown parameter"),
    ({"references": [{"audio": "not base64!", "text": "x"}]}, 400, "references.0.audio", "base64"),
    ({"references": [{"audio": "/etc/passwd", "text": "x"}]}, 400, "references.0.audio", "base64"),
    ({"references": [{"audio": "", "text": "x"}]}, 400, "references.0.audio", "empty"),
    ({"references": [{"audio": b64(b"\x00garbage" * 100), "text": "x"}]}, 400, "references.0.audio", "decode"),
    ({"references": [{"audio": b64(wav_bytes(np.zeros(44100, np.float32))), "text": "x"}]}, 400,
     "references.0.audio", "silent"),
    ({"references": [{"audio": b64(noise(0.5)), "text": "x"}]}, 400, "references.0.audio", "too short"),
    ({"references": [{"audio": b64(noise(31)), "text": "x"}]}, 400, "references.0.audio", "too long"),
    ({"references": [{"audio": b64(noise(2)), "text": " "}]}, 400, "references.0.text", "transcript"),
    ({"references": [{"audio": b64(noise(2))}]}, 400, "references.0.text", "missing"),
], ids=lambda v: str(v)[:40] if isinstance(v, dict) else None)
def test_bad_speech_requests(api_server: Server, body: dict, status: int, param: str, match: str) -> None:
    assert_openai_error(speech(api_server, **body), status, param, match)


@pytest.mark.parametrize("content, match", [
    (b"{bad json", "not valid json"), (b"", "missing"), (b"[1, 2]", "invalid"), (b'{"input": "hi"}', "model"),
])
def test_malformed_bodies_are_400_not_422(api_server: Server, content: bytes, match: str) -> None:
    r = httpx.post(api_server.url + "/v1/audio/speech", content=content,
                   headers={"content-type": "application/json"}, timeout=30)
    assert_openai_error(r, 400, match=match)


def test_body_over_the_limit_is_413(api_server: Server) -> None:
    declared = httpx.post(api_server.url + "/v1/audio/speech", content=b" " * (26 << 20), timeout=60,
                          headers={"content-type": "application/json"})
    assert_openai_error(declared, 413, match="limit of 25 MB")

    def chunks(head: bytes) -> Iterator[bytes]:  # chunked transfer: no length up front, counted while read
        yield head
        for _ in range(27):
            yield b" " * (1 << 20)
    chunked_json = httpx.post(api_server.url + "/v1/audio/speech", content=chunks(b'{"input": "'), timeout=60,
                              headers={"content-type": "application/json"})
    assert_openai_error(chunked_json, 413, match="limit of 25 MB")
    part = b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    chunked_upload = httpx.post(api_server.url + "/v1/voices", content=chunks(part), timeout=60,
                                headers={"content-type": "multipart/form-data; boundary=x"})
    assert_openai_error(chunked_upload, 413, match="limit of 25 MB")


def upload(server: Server, name: str | None = "Clip", transcript: str | None = CLONE_TEXT,
           data: bytes | None = None) -> httpx.Response:
    form = {k: v for k, v in (("name", name), ("transcript", transcript)) if v is not None}
    files = None if data is None else {"file": ("clip.wav", data, "audio/wav")}
    return httpx.post(server.url + "/v1/voices", data=form, files=files, timeout=60)


def test_bad_voice_uploads(api_server: Server, tmp_path: Path) -> None:
    clip = espeak_clip(tmp_path / "clip.wav")
    assert_openai_error(upload(api_server, data=None), 400, "file", "missing")
    assert_openai_error(upload(api_server, name=None, data=clip), 400, "name", "missing")
    assert_openai_error(upload(api_server, data=b""), 400, "file", "empty")
    assert_openai_error(upload(api_server, data=b"RIFF not really a wav" * 50), 400, "file", "decode")
    assert_openai_error(upload(api_server, data=wav_bytes(np.zeros(44100, np.float32))), 400, "file", "silent")
    assert_openai_error(upload(api_server, data=noise(0.5)), 400, "file", "too short")
    assert_openai_error(upload(api_server, data=noise(31)), 400, "file", "too long")
    assert_openai_error(upload(api_server, name="x" * 65, data=clip), 400, "name", "1 to 64")
    assert_openai_error(upload(api_server, name="alloy", data=clip), 400, "name", "reserved")
    assert_openai_error(upload(api_server, transcript=" ", data=clip), 400, "transcript", "transcript is empty")
    assert upload(api_server, name="Taken", data=clip).status_code == 201
    assert_openai_error(upload(api_server, name="taken", data=clip), 409, "name", "already exists")
    assert_openai_error(speech(api_server, voice="Clip"), 404, "voice")  # no failed upload was kept


def test_bad_voice_edits(api_server: Server, tmp_path: Path) -> None:
    clip = espeak_clip(tmp_path / "clip.wav")
    one, other = (upload(api_server, name=n, data=clip).json() for n in ("Edit one", "Edit two"))
    url = api_server.url + "/v1/voices"
    assert_openai_error(httpx.patch(f"{url}/{one['id']}", json={"name": "edit TWO"}), 409, "name")
    assert_openai_error(httpx.patch(f"{url}/{one['id']}", json={"name": ""}), 400, "name", "1 to 64")
    assert_openai_error(httpx.patch(f"{url}/{one['id']}", json={}), 400, "name", "missing")
    broken = httpx.patch(f"{url}/{one['id']}", content=b"{", headers={"content-type": "application/json"})
    assert_openai_error(broken, 400, match="not valid json")
    assert_openai_error(httpx.patch(f"{url}/voice_0123456789abcdef", json={"name": "n"}), 404, "voice_id")
    assert_openai_error(httpx.delete(f"{url}/voice_0123456789abcdef"), 404, "voice_id")
    assert_openai_error(httpx.get(f"{url}/nobody"), 404, "voice_id")
    assert httpx.get(f"{url}/{other['id']}").json()["name"] == "Edit two"


@pytest.mark.parametrize("path", [
    "/v1/voices/..%2F..%2F..%2Fetc%2Fpasswd", "/v1/voices/..%2F..%2F..%2Fetc%2Fpasswd/audio",
    "/v1/voices/%2e%2e/audio", "/v1/voices/..%5C..%5Cetc%5Cpasswd/audio", "/v1/voices/%2Fetc%2Fpasswd/audio",
    "/v1/voices/voice_0123456789abcdef%2F..%2F..%2Fs2pro.sqlite3/audio",
])
def test_path_traversal_reads_nothing(api_server: Server, path: str) -> None:
    r = httpx.get(api_server.url + path, timeout=30)
    assert r.status_code == 404
    assert b"root:" not in r.content and b"SQLite" not in r.content


def test_voice_named_like_a_path_reads_nothing(api_server: Server) -> None:
    for voice in ("../../etc/passwd", "/etc/passwd", "..", {"id": "../s2pro.sqlite3"}):
        assert_openai_error(speech(api_server, voice=voice), 404, "voice", "no voice")


def test_unknown_route_and_method(api_server: Server) -> None:
    assert_openai_error(httpx.get(api_server.url + "/v1/audio/speech"), 405)
    assert_openai_error(httpx.get(api_server.url + "/v1/models/whisper-1"), 404, "model")
