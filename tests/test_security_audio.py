"""Audio bombs and hostile paths against engine.audio's upload decoder: each class is rejected with a
message the user can act on, in bounded time (pytest-timeout) and bounded memory (VmHWM/VmRSS)."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import engine.audio as audio
import engine.audio_out as audio_out
from engine.audio import MAX_UPLOAD_BYTES, AudioError, DecoderBusyError, load_audio, load_clip

soundfile = pytest.importorskip("soundfile")
av = pytest.importorskip("av")

LIMIT_SECONDS = 30.0  # the playground's and the API's upload limit
BOMB_SECONDS = 300  # the reported bomb: 5 minutes of a constant, 8 channels at 96 kHz
# One decode may hold LIMIT_SECONDS of mono audio at 96 kHz (11 MiB), one block and the codec's
# state; before the limits one bomb cost 1.75 GB.
PEAK_MARGIN_MB = 30.0
BOMB_TIMEOUT_S = 60  # covers making the session's bomb (3-6 s) in the first user's setup


def status_mb(field: str) -> float:
    """A VmRSS / VmHWM line of /proc/self/status, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"{field} missing from /proc/self/status")


def peak_growth_mb(action: Callable[[], None]) -> float:
    """How far RSS rose above its starting level while `action` ran."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    before = status_mb("VmRSS")
    action()
    return status_mb("VmHWM") - before


def rejected(source: bytes | str | Path, match: str) -> Callable[[], None]:
    def action() -> None:
        with pytest.raises(AudioError, match=match):
            load_clip(source, min_seconds=1.0, max_seconds=LIMIT_SECONDS)

    return action


def constant_flac(seconds: int, sample_rate: int = 96_000, channels: int = 8) -> bytes:
    """Minutes of a constant compress to a few hundred KB of FLAC (constant subframes)."""
    out = io.BytesIO()
    block = np.full((sample_rate, channels), 8192, np.int16)  # 0.25 of full scale
    with soundfile.SoundFile(out, "w", sample_rate, channels, format="FLAC", subtype="PCM_16") as file:
        for _ in range(seconds):
            file.write(block)
    return out.getvalue()


def with_flac_total_samples(data: bytes, total_samples: int) -> bytes:
    """Rewrite STREAMINFO's 36-bit sample count (0 = unknown, as a streamed encoder leaves it)."""
    head = int.from_bytes(data[18:26], "big")  # rate:20 channels:3 bits:5 total:36
    patched = (head & ~((1 << 36) - 1)) | total_samples
    return data[:18] + patched.to_bytes(8, "big") + data[26:]


def wav_bytes(sample_rate: int, pcm: bytes, channels: int = 1, data_size: int | None = None) -> bytes:
    """A 16-bit PCM WAV whose header claims `data_size` bytes of samples (default: the truth)."""
    size = len(pcm) if data_size is None else data_size
    riff = struct.pack("<4sI4s", b"RIFF", min(size + 36, 0xFFFFFFFF), b"WAVE")
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, channels, sample_rate, sample_rate * 2 * channels, 2 * channels, 16)
    return riff + fmt + struct.pack("<4sI", b"data", size) + pcm


def tone_pcm(seconds: float, sample_rate: int, channels: int = 1) -> bytes:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wave = (8000 * np.sin(2 * np.pi * 220 * t)).astype("<i2")
    return np.repeat(wave[:, None], channels, axis=1).tobytes()


class Unseekable(io.BytesIO):
    """What a browser's MediaRecorder writes to: muxers cannot go back to record the length."""

    def seekable(self) -> bool:
        return False


def av_file(container: str, codec: str, seconds: float, sample_rate: int = 48_000, layout: str = "mono",
            sink: type[io.BytesIO] = io.BytesIO) -> bytes:
    """`seconds` of a 220 Hz tone written by PyAV (s16 for PCM codecs, fltp for the rest)."""
    out = sink()
    with av.open(out, "w", format=container) as file:
        stream = file.add_stream(codec, rate=sample_rate, layout=layout)
        num_channels, pcm = av.AudioLayout(layout).nb_channels, codec.startswith("pcm_")
        step = sample_rate // 10
        for start in range(0, int(seconds * sample_rate), step):
            wave = 0.3 * np.sin(2 * np.pi * 220 * np.arange(start, start + step) / sample_rate)
            planes = np.repeat(wave[None, :], num_channels, axis=0).astype(np.float32)
            array = (planes.T.reshape(1, -1) * 32767).astype(np.int16) if pcm else planes
            frame = av.AudioFrame.from_ndarray(array, format="s16" if pcm else "fltp", layout=layout)
            frame.sample_rate, frame.time_base, frame.pts = sample_rate, Fraction(1, sample_rate), start
            file.mux(stream.encode(frame))
        file.mux(stream.encode(None))
    return out.getvalue()


@pytest.fixture(scope="session")
def flac_bomb() -> bytes:
    return constant_flac(BOMB_SECONDS)


# ---------------------------------------------------------------- decompression bombs


@pytest.mark.timeout(BOMB_TIMEOUT_S)
def test_flac_bomb_rejected_from_its_header(flac_bomb: bytes) -> None:
    assert len(flac_bomb) < 300_000  # 5 min x 8 ch x 96 kHz = 921 MB of float32 decoded
    growth = peak_growth_mb(rejected(flac_bomb, r"^Audio too long: 300\.00 s \(maximum 30 s\); trim it first\.$"))
    assert growth < 5.0  # refused before a single block is decoded


@pytest.mark.timeout(BOMB_TIMEOUT_S)
def test_streamed_flac_bomb_stops_at_the_limit(flac_bomb: bytes) -> None:
    streamed = with_flac_total_samples(flac_bomb, 0)  # the header no longer says how long it is
    assert soundfile.info(io.BytesIO(streamed)).frames == 2**63 - 1
    growth = peak_growth_mb(rejected(streamed, r"^Audio too long: over the maximum of 30 s; trim it first\.$"))
    assert growth < PEAK_MARGIN_MB


@pytest.mark.timeout(BOMB_TIMEOUT_S)
def test_flac_claiming_one_second_yields_one_second(flac_bomb: bytes) -> None:
    short_claim = with_flac_total_samples(flac_bomb, 96_000)  # holds 300 s, claims 1 s
    clip = load_clip(short_claim, min_seconds=1.0, max_seconds=LIMIT_SECONDS)
    assert (clip.native_rate, len(clip.native), len(clip.samples)) == (96_000, 96_000, 44_100)
    np.testing.assert_array_equal(clip.native, np.full(96_000, 8192 / 32768, np.float32))


@pytest.mark.timeout(20)
def test_wav_header_lies_about_its_length() -> None:
    pcm = tone_pcm(40.0, 8_000)
    # "Unknown size" (a streamed WAV) over 40 s of samples: the true length is read and refused.
    with pytest.raises(AudioError, match=r"^Audio too long: 40\.00 s \(maximum 30 s\)"):
        load_clip(wav_bytes(8_000, pcm, data_size=0xFFFFFFFF), min_seconds=1.0, max_seconds=LIMIT_SECONDS)
    # A data chunk claiming 2 s in front of 40 s of samples: only the claimed 2 s are decoded.
    clip = load_clip(wav_bytes(8_000, pcm, data_size=2 * 2 * 8_000), min_seconds=1.0, max_seconds=LIMIT_SECONDS)
    assert (clip.native_rate, len(clip.native)) == (8_000, 16_000)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("make", "match"),
    [
        pytest.param(lambda: _soundfile_file(60, "MP3"), r"^Audio too long: 60\.00 s", id="mp3"),
        pytest.param(lambda: _soundfile_file(60, "OGG"), r"^Audio too long: 60\.00 s", id="ogg-vorbis"),
        pytest.param(lambda: av_file("webm", "libopus", 60), r"^Audio too long: 60\.01 s", id="webm-opus"),
        pytest.param(lambda: av_file("ipod", "aac", 60), r"^Audio too long: 60\.0\d s", id="m4a-aac"),
        # No length in the header at all: PyAV's decode loop stops at the limit.
        pytest.param(lambda: av_file("webm", "libopus", 60, sink=Unseekable), "over the maximum of 30 s",
                     id="live-webm"),
        pytest.param(lambda: av_file("adts", "aac", 60, sink=Unseekable), "Audio too long", id="adts"),
    ],
)
def test_long_compressed_uploads_rejected(make: Callable[[], bytes], match: str) -> None:
    data = make()
    assert len(data) < 2 << 20
    assert peak_growth_mb(rejected(data, match)) < PEAK_MARGIN_MB


@pytest.mark.timeout(20)
def test_one_sample_packets_stopped_by_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    # 20,000 one-sample PCM packets (160 KB) decode one Python-visible frame each: at 25 MB, minutes.
    out, rate = io.BytesIO(), 192_000
    with av.open(out, "w", format="matroska") as file:
        stream = file.add_stream("pcm_s16le", rate=rate, layout="mono")
        for pts in range(20_000):
            frame = av.AudioFrame.from_ndarray(np.full((1, 1), 100, np.int16), format="s16", layout="mono")
            frame.sample_rate, frame.time_base, frame.pts = rate, Fraction(1, rate), pts
            file.mux(stream.encode(frame))
    monkeypatch.setattr(audio, "DECODE_DEADLINE_SECONDS", 0.3)
    started = time.monotonic()
    with pytest.raises(AudioError, match=r"^The audio took more than 0\.3 s to decode; re-export it as WAV or FLAC\.$"):
        load_audio(out.getvalue())
    assert time.monotonic() - started < 1.5


def _soundfile_file(seconds: int, fmt: str, sample_rate: int = 22_050) -> bytes:
    out = io.BytesIO()
    t = np.arange(seconds * sample_rate) / sample_rate
    soundfile.write(out, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sample_rate, format=fmt)
    return out.getvalue()


# ---------------------------------------------------------------- channels and rates


@pytest.mark.timeout(10)
def test_too_many_channels_rejected_before_decoding() -> None:
    sixteen = wav_bytes(8_000, tone_pcm(2.0, 8_000, channels=16), channels=16)
    with pytest.raises(AudioError, match=r"^The audio has 16 channels \(at most 8\); export it as mono or stereo\.$"):
        load_audio(sixteen)
    mka = av_file("matroska", "pcm_s16le", 2.0, layout="hexadecagonal")  # the PyAV path
    with pytest.raises(AudioError, match=r"^The audio has 16 channels \(at most 8\)"):
        load_audio(mka)
    eight = wav_bytes(8_000, tone_pcm(2.0, 8_000, channels=8), channels=8)
    assert len(load_clip(eight, min_seconds=1.0, max_seconds=LIMIT_SECONDS).native) == 16_000


@pytest.mark.timeout(10)
@pytest.mark.parametrize("sample_rate", [1, 4_000, 7_999, 192_001, 10_000_000])
def test_absurd_sample_rates_rejected(sample_rate: int) -> None:
    data = wav_bytes(sample_rate, tone_pcm(2.0, 8_000))
    message = rf"^Unsupported sample rate {sample_rate} Hz \(allowed 8000\.\.192000 Hz\)"
    assert peak_growth_mb(rejected(data, message)) < 5.0


@pytest.mark.timeout(10)
@pytest.mark.parametrize("sample_rate", [8_000, 192_000])
def test_edge_sample_rates_accepted(sample_rate: int) -> None:
    clip = load_clip(wav_bytes(sample_rate, tone_pcm(1.5, sample_rate)), min_seconds=1.0, max_seconds=LIMIT_SECONDS)
    assert (clip.native_rate, len(clip.native), len(clip.samples)) == (sample_rate, int(1.5 * sample_rate), 66_150)


@pytest.mark.timeout(10)
def test_sample_rate_change_mid_stream_rejected() -> None:
    tone = (0.3 * np.sin(np.arange(44_100) / 10)).astype(np.float32)
    chained = audio_out.encode_audio(tone, "aac") + audio_out.encode_audio(tone, "aac", sample_rate=22_050)
    with pytest.raises(AudioError, match="changes its channels or sample rate mid-stream"):
        load_audio(chained)


# ---------------------------------------------------------------- paths


@pytest.mark.timeout(5)
def test_fifo_path_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "upload.wav"
    os.mkfifo(fifo)  # no writer: a plain open() would wait forever
    with pytest.raises(AudioError, match=r"^Cannot read the audio file 'upload.wav': it is not a regular file\.$"):
        load_audio(fifo)


@pytest.mark.timeout(5)
def test_symlink_path_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "real.wav"
    target.write_bytes(wav_bytes(8_000, tone_pcm(2.0, 8_000)))
    (tmp_path / "link.wav").symlink_to(target)
    with pytest.raises(AudioError, match=r"^Cannot read the audio file 'link.wav': it is a symbolic link\.$"):
        load_audio(tmp_path / "link.wav")
    assert len(load_audio(target)) == 2 * 44_100  # the file itself is fine


@pytest.mark.timeout(5)
@pytest.mark.parametrize("path", ["/dev/zero", "/dev/urandom", "/dev/stdin"])
def test_device_paths_rejected(path: str) -> None:
    with pytest.raises(AudioError, match=r"it is (not a regular file|a symbolic link)\.$"):
        load_audio(path)  # /dev/stdin is a symlink to /proc/self/fd/0


@pytest.mark.timeout(5)
def test_directory_path_rejected(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match=r"^Cannot read the audio file '[^']+': it is not a regular file\.$"):
        load_audio(tmp_path)


@pytest.mark.timeout(10)
def test_oversize_file_and_bytes_rejected(tmp_path: Path) -> None:
    assert MAX_UPLOAD_BYTES == 25 << 20  # the server's 25 MB upload limit
    big = tmp_path / "big.wav"
    with big.open("wb") as file:
        file.truncate(MAX_UPLOAD_BYTES + 1)  # sparse: no disk used
    message = r"^The audio upload is larger than 25 MB; upload a shorter clip\.$"
    assert peak_growth_mb(rejected(big, message)) < PEAK_MARGIN_MB
    with pytest.raises(AudioError, match=message):
        load_audio(bytes(MAX_UPLOAD_BYTES + 1))


# ---------------------------------------------------------------- concurrency and memory


@pytest.mark.timeout(10)
def test_busy_when_no_decode_slot_frees(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audio, "DECODE_WAIT_SECONDS", 0.2)
    holders = [audio._decode_slot() for _ in range(audio.MAX_CONCURRENT_DECODES)]
    for holder in holders:
        holder.__enter__()  # every slot taken, as by long decodes in other threads
    try:
        with pytest.raises(DecoderBusyError, match=r"^The server is busy decoding other uploads; try again"):
            load_audio(wav_bytes(8_000, tone_pcm(2.0, 8_000)))
    finally:
        for holder in holders:
            holder.__exit__(None, None, None)
    assert len(load_audio(wav_bytes(8_000, tone_pcm(2.0, 8_000)))) == 2 * 44_100


# Run in a fresh interpreter: in the full suite other tests' threads would move RSS.
BURST_SCRIPT = """
import json, sys, threading
from pathlib import Path
from engine.audio import AudioError, load_clip

def rss_mb(field):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field + ":"))
    return int(line.split()[1]) / 1024

data, errors = Path(sys.argv[1]).read_bytes(), []

def upload(times):
    for _ in range(times):
        try:
            load_clip(data, min_seconds=1.0, max_seconds=30.0)
        except AudioError as exc:
            errors.append(str(exc))

upload(1)  # warm up: codecs loaded, the main arena grown
baseline = rss_mb("VmRSS")
Path("/proc/self/clear_refs").write_text("5")
threads = [threading.Thread(target=upload, args=(2,)) for _ in range(8)]  # a server's thread pool
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps({"errors": errors[1:], "peak": rss_mb("VmHWM") - baseline, "after": rss_mb("VmRSS") - baseline}))
"""


@pytest.mark.timeout(BOMB_TIMEOUT_S)
def test_concurrent_bombs_bounded_and_memory_returns(flac_bomb: bytes, tmp_path: Path) -> None:
    (tmp_path / "bomb.flac").write_bytes(with_flac_total_samples(flac_bomb, 0))  # length unknown
    run = subprocess.run([sys.executable, "-c", BURST_SCRIPT, str(tmp_path / "bomb.flac")],
                         capture_output=True, text=True, cwd=Path(__file__).parents[1], check=True)
    result = json.loads(run.stdout)
    assert result["errors"] == ["Audio too long: over the maximum of 30 s; trim it first."] * 16
    # At most MAX_CONCURRENT_DECODES (2) decodes hold their audio at once, not all 8.
    assert result["peak"] < audio.MAX_CONCURRENT_DECODES * PEAK_MARGIN_MB
    assert result["after"] < 3.0  # freed buffers went back to the OS (malloc_trim)
