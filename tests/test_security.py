"""An anonymous visitor against a real server (tiny checkpoint, CPU), as an attacker would try it: no
server file through the playground's own API, no request that freezes or bloats the server, each
visitor's voices, takes and live audio their own, bounded uploads and disk, clean errors.

Every test has a time limit, so a regression (a hang, a freeze) fails instead of stalling the suite.
Decoding bombs and hostile text are pinned in test_security_audio.py and test_security_text.py; the
HTTP limits (head deadline, body stall, connection cap) in test_http_limits.py; the key in
test_api_auth.py and here for the playground.
"""
from __future__ import annotations

import base64
import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.api_helpers import assert_openai_error, metric, speech
from tests.gradio_http import GradioVisitor, choices, file_data
from tests.server import Server
from tests.ui_helpers import speech_wav

KEY = "sk-security-test"
CLIP_TEXT = "Hello, this is my voice for the playground test."


@pytest.fixture(scope="module")
def guarded(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An open server with small caps, so that the caps are cheap to reach."""
    server = Server(tiny_dir, tmp_path_factory.mktemp("guarded"), "--max-upload-mb", "2", "--max-voices", "2",
                    "--max-history", "2").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def locked(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tiny_dir, tmp_path_factory.mktemp("locked-playground"), "--api-key", KEY).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speech_wav(tmp_path_factory.mktemp("security-clip"))


def visitor(server: Server) -> GradioVisitor:
    return GradioVisitor(server.url)


def health_ms(server: Server) -> float:
    start = time.perf_counter()
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200
    return (time.perf_counter() - start) * 1e3


def rss_mb(server: Server) -> float:
    assert server.proc is not None
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) / 1024


# ---------------------------------------------------------------- only uploaded files
@pytest.mark.timeout(120)
def test_playground_events_take_only_files_the_visitor_uploaded(guarded: Server) -> None:
    uploads = guarded.data_dir / "uploads"
    link = uploads / "link.wav"
    link.symlink_to("/etc/hostname")
    fifo = uploads / "fifo.wav"
    os.mkfifo(fifo)
    v = visitor(guarded)
    paths = ["/dev/zero", "/etc/hostname", "/proc/self/environ", str(guarded.data_dir / "session.key"),
             str(guarded.data_dir / "s2pro.sqlite3"), str(link), "/no/such/file.wav"]
    messages = []
    for path in paths:
        kind, message = v.call("checked", file_data(path))
        assert kind == "error" and "not uploaded by a user" in message, (path, message)
        messages.append(message.replace(str(Path(path).absolute()), "<path>"))
        assert health_ms(guarded) < 2000
    assert len(set(messages)) == 1, "the answer must not tell whether a path exists"
    # A FIFO inside the upload folder passes Gradio's check; the decoder must not open it blocking.
    kind, outputs = v.call("checked", file_data(str(fifo)))
    assert kind == "complete" and "s2-note-error" in outputs[0] and "regular file" in outputs[0]
    kind, message = v.call("save", file_data("/etc/hostname"), CLIP_TEXT, "Stolen")
    assert kind == "error"
    assert choices(v.call("on_load")[1][1]) == ["none", "clip"]  # nothing was saved
    assert not any(p.name == "hostname" for p in uploads.rglob("*")), "nothing was copied into the cache"


@pytest.mark.timeout(60)
def test_server_files_are_not_served(guarded: Server) -> None:
    for path in [guarded.data_dir / "s2pro.sqlite3", guarded.data_dir / "session.key", Path("/etc/hostname"),
                 guarded.data_dir / "voices"]:
        assert httpx.get(f"{guarded.url}/gradio_api/file={path}", timeout=10).status_code == 403, path
    for path in ["/gradio_api/deep_link", "/gradio_api/file=http://127.0.0.1:1/x", "/gradio_api/file=HTTPS://x",
                 "/gradio_api/proxy=http://127.0.0.1:1/", "/monitoring"]:
        r = httpx.get(guarded.url + path, timeout=10)
        assert_openai_error(r, 404, match="not found")


# ---------------------------------------------------------------- no request freezes the server
@pytest.mark.timeout(120)
def test_pathological_text_never_holds_the_server(guarded: Server) -> None:
    worst = "." * 19_999 + "a"
    results: dict[str, httpx.Response] = {}
    worker = threading.Thread(target=lambda: results.setdefault("r", speech(guarded, input=worst, max_frames=1)))
    worker.start()
    slowest = max(health_ms(guarded) for _ in range(10))
    worker.join(60)
    assert results["r"].status_code == 200 and slowest < 2000
    v = visitor(guarded)
    start = time.perf_counter()
    kind, outputs = v.call("preview_html", "." * 40_000 + "a", 300)  # over the limit: refused, cheaply
    assert kind == "complete" and "the limit is 20000" in outputs[0] and time.perf_counter() - start < 10
    kind, outputs = v.call("preview_html", worst, 300)  # at the limit: really split, in linear time
    assert kind == "complete" and 'data-chunks="' in outputs[0] and "refused" not in outputs[0]


@pytest.mark.timeout(180)
def test_audio_bombs_are_refused_and_memory_comes_back(guarded: Server, tmp_path: Path) -> None:
    bomb = io.BytesIO()  # 5 minutes of 8 channels at 96 kHz: a few KB of FLAC, 880 MB as float32
    sf.write(bomb, np.full((96_000 * 300, 8), 0.25, np.float32), 96_000, format="FLAC", subtype="PCM_16")
    data = bomb.getvalue()
    assert len(data) < 1 << 20
    baseline = rss_mb(guarded)

    answers: list[httpx.Response] = []

    def upload(i: int) -> None:
        answers.append(httpx.post(f"{guarded.url}/v1/voices", data={"name": f"bomb{i}", "transcript": "x"},
                                  files={"file": ("bomb.flac", data, "audio/flac")}, timeout=60))

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == 4
    for r in answers:  # refused from the header (or, with all decode slots taken, told to retry)
        assert r.status_code in (400, 503), r.text
        assert_openai_error(r, r.status_code, match="too long" if r.status_code == 400 else "busy")
    inline = speech(guarded, references=[{"audio": base64.b64encode(data).decode(), "text": "x"}])
    assert_openai_error(inline, 400, "references.0.audio", "too long")
    assert rss_mb(guarded) - baseline < 200


# ---------------------------------------------------------------- each visitor's own
@pytest.mark.timeout(180)
def test_voices_belong_to_the_browser_that_saved_them(guarded: Server, clip: Path) -> None:
    alice, mallory = visitor(guarded), visitor(guarded)
    kind, out = alice.call("save", alice.upload(clip), CLIP_TEXT, "Alice")
    assert kind == "complete" and "Saved" in out[0]
    voice_id = out[1]["value"]
    assert voice_id.startswith("voice_") and voice_id in choices(alice.call("on_load")[1][1])
    assert choices(mallory.call("on_load")[1][1]) == ["none", "clip"]
    assert mallory.call("picked", voice_id)[0] == "error"  # not one of Mallory's choices: no clip handed out
    for kind, out in (mallory.call("rename", voice_id, "Mine now"), mallory.call("delete", voice_id, None)):
        assert kind == "error" or "s2-note-error" in out[0]  # Gradio refuses a choice Mallory never had
    assert voice_id in choices(alice.call("on_load")[1][1])  # untouched
    # A forged cookie is no session: it is replaced by a new, empty one.
    forged = GradioVisitor(guarded.url, cookies={"s2_session": "stolen.0123456789abcdef0123456789abcdef"})
    assert choices(forged.call("on_load")[1][1]) == ["none", "clip"]
    # The API has its own library (the playground's visitors are not in it, unless --shared-library).
    assert voice_id not in {v["id"] for v in httpx.get(guarded.url + "/v1/voices", timeout=10).json()["data"]}


@pytest.mark.timeout(240)
def test_takes_and_live_audio_belong_to_their_browser(guarded: Server) -> None:
    alice, mallory = visitor(guarded), visitor(guarded)
    gen_id = "ab" * 16
    kind, _ = alice.call("generate", gen_id, "Hello there.", "none", None, "", 0.8, 0.8, 30, True, 7, 1, 300,
                         "wav", False, -16, False)
    assert kind == "complete"
    rows = alice.call("on_load")[1][2]["data"]
    assert len(rows) == 1 and mallory.call("on_load")[1][2]["data"] == []
    assert mallory.http.get(f"/playground/stream/{gen_id}").status_code == 404
    heard = alice.http.get(f"/playground/stream/{gen_id}")
    assert heard.status_code == 200 and len(heard.content) > 0
    # A forged table click names Alice's take: Mallory gets nothing (no audio, no figures).
    short = rows[0][0]
    click = {"index": [0, 0], "value": short, "row_value": rows[0], "col_value": [short]}
    kind, out = mallory.join("select", ["wav", False, -16, False], click)
    assert kind == "complete" and out[0] is None and not any(isinstance(o, dict) and "path" in o for o in out)
    kind, out = alice.join("select", ["wav", False, -16, False], click)  # the same click from Alice loads it
    assert kind == "complete" and out[3]["path"].endswith(".wav")


# ---------------------------------------------------------------- the key covers the playground
@pytest.mark.timeout(120)
def test_key_guards_the_playground_and_the_page_asks_once(locked: Server) -> None:
    url = locked.url
    assert httpx.get(url + "/health", timeout=10).status_code == 200
    page = httpx.get(url + "/", headers={"Accept": "text/html"}, timeout=10)
    assert page.status_code == 303 and page.headers["location"] == "/login"
    for method, path in [("GET", "/config"), ("POST", "/gradio_api/call/on_load"), ("POST", "/gradio_api/upload"),
                         ("GET", "/playground/stream/" + "ab" * 16), ("GET", "/metrics"),
                         ("POST", "/gradio_api/queue/join"), ("GET", "/gradio_api/info")]:
        r = httpx.request(method, url + path, json={"data": []}, timeout=10)
        assert_openai_error(r, 401, match="api key")
    form = httpx.get(url + "/login", timeout=10)
    assert form.status_code == 200 and 'name="key"' in form.text
    wrong = httpx.post(url + "/login", data={"key": "guess"}, timeout=10)
    assert wrong.status_code == 401 and "s2_auth" not in wrong.headers.get("set-cookie", "")
    with httpx.Client(base_url=url, timeout=60) as browser:
        signed_in = browser.post("/login", data={"key": KEY})
        assert signed_in.status_code == 303 and "s2_auth" in browser.cookies
        assert browser.get("/", headers={"Accept": "text/html"}).status_code == 200
        assert browser.get("/config").status_code == 200
    bearer = httpx.get(url + "/config", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert bearer.status_code == 200
    assert httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).status_code == 200


# ---------------------------------------------------------------- bounded uploads and disk
@pytest.mark.timeout(120)
def test_uploads_are_bounded_per_request(guarded: Server, clip: Path) -> None:
    data = clip.read_bytes()
    two = httpx.post(guarded.url + "/gradio_api/upload", files=[("files", ("a.wav", data)), ("files", ("b.wav", data))],
                     timeout=30)
    assert two.status_code == 413 and "at most 1 file" in two.text
    big = httpx.post(guarded.url + "/gradio_api/upload", files={"files": ("big.wav", b"\0" * (3 << 20))}, timeout=30)
    assert big.status_code == 413
    huge_event = httpx.post(guarded.url + "/gradio_api/queue/join", content=b"{" + b" " * (2 << 20) + b"}",
                            headers={"content-type": "application/json"}, timeout=30)
    assert huge_event.status_code == 413
    one = httpx.post(guarded.url + "/gradio_api/upload", files={"files": ("a.wav", data)}, timeout=30)
    assert one.status_code == 200


@pytest.mark.timeout(180)
def test_voice_library_is_capped(guarded: Server, clip: Path) -> None:
    v = visitor(guarded)
    for name in ("One", "Two"):
        assert "Saved" in v.call("save", v.upload(clip), CLIP_TEXT, name)[1][0]
    full = v.call("save", v.upload(clip), CLIP_TEXT, "Three")[1][0]
    assert "Not saved" in full and "delete one" in full
    # Identical clips are stored once, losslessly compressed.
    flacs = list((guarded.data_dir / "voices").glob("*.flac"))
    assert len(flacs) == len({f.name for f in flacs}) and sum(f.stat().st_size for f in flacs) < clip.stat().st_size * 2


# ---------------------------------------------------------------- clean edges
@pytest.mark.timeout(120)
def test_api_edges(guarded: Server) -> None:
    surrogate = httpx.post(guarded.url + "/v1/audio/speech", timeout=30,
                           content=b'{"model": "s2-pro", "input": "hi \\ud800 there", "voice": "default"}',
                           headers={"content-type": "application/json"})
    assert_openai_error(surrogate, 400, "input", "surrogate")
    body = b'{"model": "s2-pro", "input": "hi", "references": [{"audio": "AAAA", "text": "bad \\udc00"}]}'
    surrogate_ref = httpx.post(guarded.url + "/v1/audio/speech", timeout=30,
                               headers={"content-type": "application/json"}, content=body)
    assert_openai_error(surrogate_ref, 400, "references.0.text", "surrogate")
    huge_id = "x" * 5000
    missing = httpx.get(f"{guarded.url}/v1/voices/{huge_id}", timeout=10)
    assert_openai_error(missing, 404, "voice_id")
    assert len(missing.text) < 400
    for path in ("/v1", "/v1/", "/v1/" + "y" * 5000):  # every /v1 miss is OpenAI-shaped and brief
        r = httpx.get(guarded.url + path, timeout=10)
        assert_openai_error(r, 404, match="unknown api route")
        assert len(r.text) < 400
    httpx.request("BREW", guarded.url + "/v1/models", timeout=10)
    text = httpx.get(guarded.url + "/metrics", timeout=10).text
    assert 'method="BREW"' not in text and 'method="OTHER"' in text
    two = [httpx.post(f"{guarded.url}/v1/voices", data={"name": name, "transcript": CLIP_TEXT},
                      files={"file": ("c.wav", _speechy_wav(), "audio/wav")}, timeout=60) for name in ("Ｅｖｅ", "eve")]
    assert two[0].status_code == 201
    assert_openai_error(two[1], 409, "name", "already exists")


@pytest.mark.timeout(180)
def test_voice_deleted_mid_use_finishes_running_requests(guarded: Server) -> None:
    created = httpx.post(f"{guarded.url}/v1/voices", data={"name": "Brief", "transcript": CLIP_TEXT},
                         files={"file": ("c.wav", _speechy_wav(2), "audio/wav")}, timeout=60).json()
    body = {"model": "s2-pro", "input": "A long one.", "voice": created["id"], "response_format": "pcm",
            "stream_format": "audio", "max_frames": 24, "seed": 3}
    with httpx.stream("POST", guarded.url + "/v1/audio/speech", json=body, timeout=120) as running:
        assert running.status_code == 200
        chunks = running.iter_bytes()
        received = len(next(chunks))
        assert httpx.delete(f"{guarded.url}/v1/voices/{created['id']}", timeout=10).status_code == 200
        assert_openai_error(speech(guarded, voice=created["id"]), 404, "voice")
        received += sum(len(c) for c in chunks)
    assert received == 24 * 2048 * 2
    assert metric(guarded, "s2pro_kv_blocks_used") == 0


def _speechy_wav(variant: int = 1) -> bytes:
    """A 2 s voiced-sounding clip (harmonics with a slow vibrato), not silent; `variant` changes it."""
    t = np.arange(2 * 44100) / 44100
    f0 = 120 * variant * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
    phase = 2 * np.pi * np.cumsum(f0) / 44100
    samples = np.asarray(sum(np.sin(k * phase) / k for k in range(1, 8)) * 0.2)
    buf = io.BytesIO()
    sf.write(buf, samples.astype(np.float32), 44100, format="WAV", subtype="PCM_16")
    return buf.getvalue()
