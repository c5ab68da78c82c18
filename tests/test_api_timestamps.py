"""`timestamps: "word"` on POST /v1/audio/speech through a real server with the official client: the
words of the input with their times in the returned audio (SSE event or JSON answer), and clear 400s
where there can be none. The tiny checkpoint speaks noise, so these check the plumbing (every word,
in order, inside the audio); the alignment's accuracy on real speech is tests/test_alignment.py's."""
from __future__ import annotations

import base64
import itertools
import json

from engine.alignment import spoken_words
from tests.api_helpers import FRAME, assert_openai_error, client_for, pcm_samples, speech
from tests.server import Server

pytest_plugins = ("tests.api_fixtures",)
TEXT = "Hello there, [whisper] how are you today?"


def check_words(words: list[dict], duration: float) -> None:
    assert [w["word"] for w in words] == spoken_words(TEXT) == ["Hello", "there", "how", "are", "you", "today"]
    assert all(0 <= w["start"] < w["end"] <= duration + 0.011 for w in words)
    assert all(a["end"] <= b["start"] + 1e-6 for a, b in itertools.pairwise(words))


def test_sse_sends_the_word_times_before_done(api_server: Server) -> None:
    events = []
    with client_for(api_server).audio.speech.with_streaming_response.create(
            model="s2-pro", voice="default", input=TEXT, response_format="pcm", stream_format="sse",
            extra_body={"max_frames": 40, "seed": 3, "timestamps": "word"}) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: "):]))
    types = [e["type"] for e in events]
    assert types[-2:] == ["speech.audio.timestamps", "speech.audio.done"]
    audio = pcm_samples(b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta"))
    assert len(audio) == 40 * FRAME
    check_words(events[-2]["words"], len(audio) / 44100)


def test_a_complete_file_comes_as_json_with_its_words(api_server: Server) -> None:
    r = speech(api_server, input=TEXT, max_frames=40, timestamps="word", speed=1.5)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    audio = pcm_samples(base64.b64decode(body["audio"]))
    assert body["content_type"] == "audio/pcm" and body["duration"] == round(len(audio) / 44100, 3)
    assert abs(len(audio) - 40 * FRAME / 1.5) < FRAME  # the times are those of the sped-up audio
    check_words(body["words"], body["duration"])
    plain = speech(api_server, input=TEXT, max_frames=10)  # without timestamps: the bare audio, as before
    assert plain.headers["content-type"] == "audio/pcm" and len(pcm_samples(plain.content)) == 10 * FRAME


def test_timestamps_where_there_can_be_none_are_refused(api_server: Server) -> None:
    assert_openai_error(speech(api_server, input=TEXT, timestamps="word", stream_format="audio"), 400, "timestamps")
    assert_openai_error(speech(api_server, input="Zorbulax quindreth.", timestamps="word"), 400, "timestamps")
    assert_openai_error(speech(api_server, input=TEXT, timestamps="sentence"), 400)
