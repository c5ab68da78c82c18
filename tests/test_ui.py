"""The playground in a real browser (headless Chromium) against a real server on the tiny checkpoint.

The tiny random checkpoint never ends speech by itself, so every take runs to its max length and its
clip is exactly 2048 samples × max frames: lengths are exact. Screenshots of the main states land in
test-artifacts/screenshots/ for review. At the end: unit tests of the take helpers, and a real
multi-chunk take (a tiny model made to stop speaking) with one chunk regenerated and spliced.
"""
from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import httpx
import numpy as np
import pytest
from playwright.sync_api import Browser, sync_playwright

from engine.audio import SAMPLE_RATE
from engine.loader import LoadedModel
from engine.prompt import split_text
from engine.serving.async_engine import AsyncEngine
from engine.serving.engine import Engine
from engine.serving.engine_config import EngineConfig
from engine.serving.request import ChunkDone
from playground.state import AppState
from playground.ui.output import OutputOptions
from playground.ui.take import GenSettings, chunk_bounds, collect, regenerate_chunk, splice
from playground.ui.text import load_examples
from playground.ui.voices import VoiceRef
from tests.server import Server
from tests.ui_helpers import MIC_TEXT, Playground, launch, speech_wav

HOP = 2048


@pytest.fixture(scope="module")
def server(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tiny_dir, tmp_path_factory.mktemp("ui-data")).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def mic_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speech_wav(tmp_path_factory.mktemp("mic"))


@pytest.fixture(scope="module")
def browser(mic_wav: Path) -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = launch(pw, mic_wav)
        yield b
        b.close()


@pytest.fixture
def ui(browser: Browser, server: Server) -> Iterator[Playground]:
    tab = Playground(browser, server.url + "/")
    yield tab
    tab.close()


def health(server: Server) -> dict:
    return httpx.get(server.url + "/health", timeout=10).json()


def take(ui: Playground, text: str, seconds: float, seed: int | None = None) -> int:
    """Generate a take and wait for it; returns its frame count."""
    ui.set_text(text)
    ui.set_number("s2-max-seconds", seconds)
    if seed is not None:
        ui.set_number("s2-seed", seed)
    ui.generate()
    assert ui.wait_figures("done", "error", timeout=90) == "done", ui.page.inner_text("#s2-figures")
    return ui.frames()


@pytest.mark.slow
def test_page_loads_and_palette_inserts_at_caret(ui: Playground) -> None:
    page = ui.page
    assert page.locator("#s2-demo .s2-banner").inner_text().startswith("Demo mode")
    assert "device: cpu" in page.inner_text("#s2-status")
    ui.set_text("Hello world")
    page.evaluate("() => { const t = document.querySelector('#s2-text textarea'); t.focus(); "
                  "t.setSelectionRange(5, 5); }")
    page.click("#s2-palette button[data-insert='[laughing]']")
    assert page.input_value("#s2-text textarea") == "Hello [laughing] world"
    # The caret sits after the tag, so a second click goes right after the first one.
    page.click("#s2-palette button[data-insert='[whisper]']")
    assert page.input_value("#s2-text textarea") == "Hello [laughing] [whisper] world"
    page.evaluate("() => { const t = document.querySelector('#s2-text textarea'); "
                  "t.setSelectionRange(t.value.length, t.value.length); }")
    page.click("#s2-palette button[data-insert='<|speaker:1|>']")
    assert page.input_value("#s2-text textarea") == "Hello [laughing] [whisper] world\n<|speaker:1|>"
    # Gradio saw the edit (the input event): the server-side linter counted the tags.
    page.wait_for_selector("#s2-lint .s2-lint-ok:has-text('2 tag(s), 1 speaker(s)')")
    ui.shot("01-page")

    ui.set_text("(excited) Hi there [whisper <speaker:2> go")
    page.wait_for_selector("#s2-lint .s2-lint-warn[data-count='3']")
    warnings = page.inner_text("#s2-lint")
    assert "Unclosed bracket" in warnings and "paren style" in warnings and "<|speaker:N|>" in warnings
    ui.shot("02-linter")
    ui.set_number("s2-chunk-length", 100)
    page.get_by_role("button", name="Long text (chunked)").click()
    long_text = next(e["text"] for e in load_examples() if e["title"] == "Long text (chunked)")
    expected = len(split_text(long_text, 100))
    assert expected > 3
    page.wait_for_selector(f"#s2-preview .s2-preview[data-chunks='{expected}']")
    assert page.locator("#s2-preview li").count() == expected
    ui.shot("03-chunk-preview")
    assert ui.errors == []


@pytest.mark.slow
def test_generate_streams_to_the_worklet_before_the_end(ui: Playground, server: Server) -> None:
    ui.set_text("Streaming check: the browser should hear this before the take is finished.")
    ui.set_number("s2-max-seconds", 4)  # 87 frames: several seconds on two CPU cores
    ui.set_number("s2-seed", 7)
    ui.generate()
    live: dict = {}

    def hearing_while_running() -> bool:
        live.update(ui.player())
        return live["samplesReceived"] > 0 and live["figures"] == "running" and live["stopEnabled"]
    ui.wait_until(hearing_while_running, timeout=30, what="samples in the worklet while the take runs")
    ui.shot("04-generating")
    assert ui.wait_figures("done", timeout=90) == "done"
    frames = ui.frames()
    assert frames == 87
    assert 0 < live["samplesReceived"] < HOP * frames  # audio arrived before the take was complete
    clip = ui.audio()
    assert len(clip) == HOP * frames
    ui.wait_until(lambda: ui.player()["state"] == "done", what="the player to drain")
    final = ui.player()
    assert final["samplesReceived"] == HOP * frames and final["chunksReceived"] > 1
    assert ui.page.input_value("#s2-used-seed textarea") == "7"
    assert health(server)["running"] == 0
    ui.shot("05-done")
    assert ui.errors == []


@pytest.mark.slow
def test_stop_aborts_the_engine_request(ui: Playground, server: Server) -> None:
    newest_before = ui.history_rows()[:1]
    ui.set_text("This take is stopped half way.")
    ui.set_number("s2-max-seconds", 60)
    ui.generate()
    ui.wait_until(lambda: ui.player()["samplesReceived"] > 0, timeout=30, what="first samples")
    assert health(server)["running"] == 1
    ui.page.click("#s2-stop")
    ui.wait_until(lambda: health(server)["running"] == 0 and health(server)["waiting"] == 0, timeout=5,
                  what="the engine to drop the request")
    assert ui.wait_figures("stopped", timeout=5) == "stopped"
    assert ui.player()["state"] == "stopped"
    assert ui.page.locator("#s2-generate").is_enabled()
    time.sleep(0.5)
    assert ui.history_rows()[:1] == newest_before  # an aborted take is not saved
    ui.shot("06-stopped")
    assert ui.errors == []


@pytest.mark.slow
def test_microphone_clip_becomes_a_voice_and_clones(ui: Playground, server: Server, mic_wav: Path) -> None:
    page = ui.page
    page.click("#s2-clip button[aria-label='Record audio']")
    page.click("#s2-clip button.record-button")
    time.sleep(2.5)
    page.click("#s2-clip button.stop-button")
    page.wait_for_selector("#s2-clip-check .s2-note-ok", timeout=20_000)
    assert page.input_value("#s2-voice-choice input") == "The clip below (unsaved)"
    page.fill("#s2-transcript textarea", MIC_TEXT)
    page.fill("#s2-voice-name textarea", "Mic voice")
    page.click("#s2-voice-save")
    page.wait_for_selector("#s2-clip-check .s2-note-ok:has-text('Saved as')", timeout=20_000)
    assert page.input_value("#s2-voice-choice input").startswith("Mic voice · ")
    # The voice is this browser's: not in the API's library, nor in another browser's list.
    assert "Mic voice" not in {v["name"] for v in httpx.get(server.url + "/v1/voices").json()["data"]}

    frames = take(ui, "Now I speak in the recorded voice.", 1.5)
    assert len(ui.audio()) == HOP * frames
    ui.wait_history(lambda rows: rows and rows[0][2] == "Now I speak in the recorded voice.", "the new row")
    assert ui.history_rows()[0][3] == "Mic voice"
    ui.shot("07-voice-clone")

    with mic_wav.open("rb") as f:
        created = httpx.post(server.url + "/v1/voices", data={"name": "API voice", "transcript": MIC_TEXT},
                             files={"file": ("speech.wav", f, "audio/wav")}, timeout=60)
    assert created.status_code == 201, created.text
    ui.open()  # a reload keeps this browser's session: its voice and take are still there
    page.click("#s2-voice-choice input")
    options = page.locator("[role=option]").all_inner_texts()
    assert any(o.startswith("Mic voice") for o in options) and not any(o.startswith("API voice") for o in options)
    assert ui.history_rows()[0][3] == "Mic voice"
    browser = ui.context.browser
    assert browser is not None
    other = Playground(browser, server.url + "/")
    try:
        other.page.click("#s2-voice-choice input")
        assert not any(o.startswith("Mic voice") for o in other.page.locator("[role=option]").all_inner_texts())
        assert other.history_rows() == []
    finally:
        other.close()
    assert ui.errors == []


@pytest.mark.slow
def test_history_survives_restart_and_rerun_reproduces(ui: Playground, server: Server) -> None:
    frames = take(ui, "Same seed, same audio.", 1.5, seed=4242)
    original = ui.audio()
    assert len(original) == HOP * frames
    text = "Same seed, same audio."
    short_id = ui.wait_history(lambda rows: rows and rows[0][2] == text, "the new row")[0][0]

    ui.page.goto("about:blank")  # no page polling a server that is down
    server.restart()
    ui.open()
    rows = ui.wait_history(lambda rows: any(r[0] == short_id for r in rows), "the take after the restart")
    row = next(r for r in rows if r[0] == short_id)
    assert row[2] == text and row[4] == "4242"
    ui.click_history_row(short_id)
    assert ui.wait_figures("loaded") == "loaded"
    assert np.array_equal(ui.audio(), original)
    ui.shot("08-history")

    ui.page.click("#s2-history-rerun")
    assert ui.wait_figures("done", "error", timeout=90) == "done", ui.page.inner_text("#s2-figures")
    rows = ui.wait_history(lambda rows: rows and rows[0][0] != short_id, "the re-run's row")
    assert rows[0][2] == text and rows[0][4] == "4242"
    assert np.array_equal(ui.audio(), original)  # same settings and seed: identical samples

    ui.click_history_row(rows[0][0])
    assert ui.wait_figures("loaded") == "loaded"
    ui.page.click("#s2-history-delete")
    ui.wait_until(lambda: all(r[0] != rows[0][0] for r in ui.history_rows()), what="the deleted row to go")
    assert ui.errors == []


@pytest.mark.slow
def test_chunk_replay_and_regenerate(ui: Playground) -> None:
    frames = take(ui, "One chunk to redo.", 1.0, seed=11)
    before = ui.audio()
    ui.page.click("#s2-chunks button.label-wrap, #s2-chunks > button")
    ui.page.click("#s2-chunk-play")
    assert np.array_equal(ui.audio("s2-chunk-audio"), before)  # the single chunk is the whole take
    ui.page.click("#s2-chunk-regen")
    ui.page.wait_for_selector("#s2-chunk-note .s2-note-ok", timeout=60_000)
    ui.wait_until(lambda: not np.array_equal(ui.audio(), before), what="the spliced take")
    after = ui.audio()
    assert len(after) == HOP * frames  # the tiny model fills the same max length
    ui.shot("09-chunk-regenerated")
    assert ui.errors == []


@pytest.mark.slow
def test_subtitles_of_a_take_parse_and_fit_its_length(ui: Playground) -> None:
    """The take's SRT and WebVTT downloads: every word of the text in order, cues inside the take."""
    text = "Subtitles for [whisper] this short take."
    frames = take(ui, text, 2.0, seed=12)
    ui.page.click("#s2-subtitles-panel button.label-wrap, #s2-subtitles-panel > button")
    ui.page.click("#s2-subtitles-make")
    files = {}
    for ext in ("srt", "vtt"):
        link = ui.page.locator(f"#s2-subtitles a[href*='.{ext}']").first
        link.wait_for(timeout=60_000)
        href = link.get_attribute("href")
        assert href is not None
        resp = httpx.get(href, timeout=30)
        resp.raise_for_status()
        files[ext] = resp.text
    clock = re.compile(r"(\d\d):(\d\d):(\d\d)[,.](\d\d\d) --> (\d\d):(\d\d):(\d\d)[,.](\d\d\d)")
    blocks = [b.split("\n") for b in files["srt"].strip().split("\n\n")]
    words, ends = [], []
    for n, block in enumerate(blocks, start=1):
        m = clock.fullmatch(block[1])
        assert block[0] == str(n) and m is not None, block
        h1, m1, s1, ms1, h2, m2, s2, ms2 = (int(g) for g in m.groups())
        start, end = h1 * 3600 + m1 * 60 + s1 + ms1 / 1000, h2 * 3600 + m2 * 60 + s2 + ms2 / 1000
        assert 0 <= start < end
        ends.append(end)
        words += " ".join(block[2:]).split()
    assert words == ["Subtitles", "for", "this", "short", "take"]
    assert ends == sorted(ends) and ends[-1] <= HOP * frames / SAMPLE_RATE + 0.011
    assert files["vtt"].startswith("WEBVTT\n\n") and len(files["vtt"].strip().split("\n\n")) == len(blocks) + 1
    assert ui.errors == []


# -- unit tests of the take helpers (no browser) -----------------------------------------------

def test_splice_shifts_later_chunks() -> None:
    samples = np.arange(10, dtype=np.float32)
    chunks = [{"text": "a", "start_sample": 0, "end_sample": 3}, {"text": "b", "start_sample": 3, "end_sample": 7},
              {"text": "c", "start_sample": 7, "end_sample": 10}]
    out, new = splice(samples, chunks, 1, np.full(2, -1, np.float32), seed=5)
    assert out.tolist() == [0, 1, 2, -1, -1, 7, 8, 9]
    assert [(c["start_sample"], c["end_sample"]) for c in new] == [(0, 3), (3, 5), (5, 8)]
    assert new[1]["seed"] == 5 and "seed" not in new[0]


def test_chunk_bounds_follow_the_engine_chunks() -> None:
    done = [ChunkDone(0, "One.", 0, 3), ChunkDone(1, "Silent.", 3, 3), ChunkDone(2, "Two.", 3, 5)]
    assert chunk_bounds(done, "One. Silent. Two.", 5 * HOP, HOP) == [  # a chunk without frames is left out
        {"text": "One.", "start_sample": 0, "end_sample": 3 * HOP},
        {"text": "Two.", "start_sample": 3 * HOP, "end_sample": 5 * HOP}]
    whole = [{"text": "One. Two.", "start_sample": 0, "end_sample": 4 * HOP}]
    assert chunk_bounds(done, " One. Two.", 4 * HOP, HOP) == whole  # lengths disagree: one chunk
    assert chunk_bounds([], "One. Two.", 4 * HOP, HOP) == whole


def test_settings_map_every_control_onto_the_request() -> None:
    s = GenSettings.from_controls("Hi [whisper] there.", 0.5, 0.7, 12, False, 99, 2.0, 150, HOP)
    req = s.request(VoiceRef())
    assert (req.sampling.temperature, req.sampling.top_p, req.sampling.top_k, req.sampling.ras,
            req.sampling.seed) == (0.5, 0.7, 12, False, 99)
    assert req.max_frames == 44 and req.chunk_length == 150  # ceil(2 s · 44100 / 2048)
    assert GenSettings.from_history(s.text, s.params(), s.seed) == s
    assert GenSettings.from_controls("x", 0.8, 0.8, 30, True, -1, 1, 0, HOP).seed >= 0


def test_output_options_change_the_clip() -> None:
    rng = np.random.default_rng(0)
    speech = (0.02 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32)
    clip = np.concatenate([np.zeros(SAMPLE_RATE, np.float32), speech, np.zeros(SAMPLE_RATE, np.float32)])
    plain = OutputOptions(normalize=False).apply(clip)
    assert np.array_equal(plain, clip)
    trimmed = OutputOptions(normalize=False, trim=True).apply(clip)
    assert SAMPLE_RATE <= len(trimmed) < len(clip) - SAMPLE_RATE
    louder = OutputOptions(normalize=True, target_lufs=-14).apply(clip)
    assert len(louder) == len(clip) and np.abs(louder).max() > 2 * np.abs(clip).max()


def test_multi_chunk_take_regenerates_one_chunk_in_place(talkative_model: LoadedModel) -> None:
    engine = AsyncEngine(Engine(talkative_model, EngineConfig(num_blocks=256, block_size=16, max_batch=2)))
    state = cast(AppState, SimpleNamespace(engine=engine))  # a stand-in: the take functions use only its engine
    text = "The first sentence is here. A second one follows it now. The third and last one ends it."
    settings = GenSettings(text, 0.8, 0.8, 30, True, seed=3, max_frames=400, chunk_length=50)

    async def main() -> tuple:
        take = await collect(state, settings.request(VoiceRef()), HOP)
        redone = await regenerate_chunk(state, settings, VoiceRef(), take.samples, take.chunks, 1, HOP)
        return take, redone
    try:
        # A thread of its own: the module's Playwright session keeps an event loop in the main thread.
        with ThreadPoolExecutor(1) as pool:
            take, (samples, chunks, seed) = pool.submit(asyncio.run, main()).result()
    finally:
        engine.shutdown()
    assert take.stats["reason"] == "eos" and take.stats["chunks"] == 3
    assert [c["text"] for c in take.chunks] == split_text(text, 50)  # every chunk spoke at least one frame
    ends = [0] + [c["end_sample"] for c in take.chunks]
    assert [c["start_sample"] for c in take.chunks] == ends[:-1] and ends[-1] == len(take.samples)
    assert all(c["end_sample"] > c["start_sample"] and c["start_sample"] % HOP == 0 for c in take.chunks)
    old, new = take.chunks[1], chunks[1]
    assert new["seed"] == seed and new["text"] == old["text"]
    assert np.array_equal(samples[:old["start_sample"]], take.samples[:old["start_sample"]])
    assert np.array_equal(samples[new["end_sample"]:], take.samples[old["end_sample"]:])
    assert chunks[2]["end_sample"] == len(samples) and chunks[2]["start_sample"] == new["end_sample"]
