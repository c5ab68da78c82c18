"""engine.audio on real audio: espeak-ng speech converted by the ffmpeg binary to every upload
format, encoded back to every response format, streamed, stretched, normalised and trimmed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from engine.audio import SAMPLE_RATE, AudioError, duration_seconds, is_silent, load_audio, load_clip
from engine.audio_out import (
    CONTENT_TYPES,
    StreamEncoder,
    encode_audio,
    float_to_int16,
    normalize_loudness,
    time_stretch,
    trim_silence,
)
from tests.tools import tool

soundfile = pytest.importorskip("soundfile")
pyloudnorm = pytest.importorskip("pyloudnorm")

ESPEAK_RATE = 22050
# ffmpeg arguments per upload file; lossless ones must decode to the same waveform.
LOSSLESS = {
    "speech.flac": ["-c:a", "flac"],
    "speech_48k_stereo.wav": ["-ar", "48000", "-ac", "2"],
    "speech_u8.wav": ["-c:a", "pcm_u8"],
    "speech_f32.wav": ["-c:a", "pcm_f32le"],
}
# Lossy uploads: (ffmpeg arguments, most extra samples at 44.1 kHz). AAC in m4a keeps one
# 1024-sample frame of end padding at 22.05 kHz (ffmpeg's own CLI decode does the same), and
# opus in webm keeps ~3 ms of pre-roll.
LOSSY = {
    "speech.mp3": (["-c:a", "libmp3lame", "-b:a", "128k"], 0),
    "speech.ogg": (["-c:a", "libvorbis"], 0),
    "speech.webm": (["-c:a", "libopus"], 200),
    # Written to a pipe like a browser's MediaRecorder: no duration, no cues, unknown-size clusters.
    "speech_live.webm": (["-c:a", "libopus", "-f", "webm", "-live", "1"], 200),
    "speech.m4a": (["-c:a", "aac"], 2 * 1024),
}
CEILING = 10 ** (-1 / 20)


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """espeak-ng speech (22.05 kHz int16 wav) and its conversions to every upload format."""
    root = tmp_path_factory.mktemp("audio")
    source = root / "speech.wav"
    text = "The quick brown fox jumps over the lazy dog. Testing one, two, three."
    subprocess.run([tool("espeak-ng"), "-w", str(source), text], check=True)
    specs = {**LOSSLESS, **{name: args for name, (args, _) in LOSSY.items()}}
    for name, args in specs.items():
        ffmpeg_convert(source, root / name, args)
    return root


def ffmpeg_convert(source: Path, target: Path, args: list[str]) -> None:
    """Convert with the ffmpeg binary; args naming a format (-f) write through a pipe (unseekable)."""
    command = [tool("ffmpeg"), "-v", "error", "-y", "-i", str(source), *args]
    if "-f" in args:
        target.write_bytes(subprocess.run([*command, "pipe:1"], capture_output=True, check=True).stdout)
    else:
        subprocess.run([*command, str(target)], check=True)


@pytest.fixture(scope="session")
def speech(clips: Path) -> np.ndarray:
    return load_audio(clips / "speech.wav")


def espeak_num_samples(clips: Path) -> int:
    """Length of the espeak clip at 44.1 kHz, from its own header."""
    return soundfile.info(str(clips / "speech.wav")).frames * SAMPLE_RATE // ESPEAK_RATE


def best_lag_correlation(a: np.ndarray, b: np.ndarray, max_lag: int = 4096) -> tuple[int, float]:
    """(lag of a behind b, normalised cross-correlation at that lag), via FFT."""
    size = 1 << int(np.ceil(np.log2(len(a) + len(b))))
    corr = np.fft.irfft(np.fft.rfft(a, size) * np.conj(np.fft.rfft(b, size)), size)
    lags = np.r_[np.arange(max_lag + 1), np.arange(-max_lag, 0)]
    best = int(np.argmax(corr[lags]))
    return int(lags[best]), float(corr[lags[best]] / np.sqrt(np.dot(a, a) * np.dot(b, b)))


def dominant_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / SAMPLE_RATE)[np.argmax(spectrum)])


def sine(hz: float, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


# ---------------------------------------------------------------- load_audio


def test_load_espeak_wav_resamples_to_44k_mono(clips: Path, speech: np.ndarray) -> None:
    assert speech.dtype == np.float32 and speech.ndim == 1
    assert len(speech) == espeak_num_samples(clips)
    assert duration_seconds(speech) == pytest.approx(len(speech) / SAMPLE_RATE)
    assert 2.0 < duration_seconds(speech) < 8.0
    assert not is_silent(speech)


@pytest.mark.parametrize("source_type", [bytes, str, Path])
def test_load_accepts_bytes_and_paths(clips: Path, speech: np.ndarray, source_type: type) -> None:
    path = clips / "speech.flac"
    source = path.read_bytes() if source_type is bytes else source_type(path)
    np.testing.assert_array_equal(load_audio(source), speech)


@pytest.mark.parametrize("name", list(LOSSLESS))
def test_load_lossless_formats_match_original(clips: Path, speech: np.ndarray, name: str) -> None:
    samples = load_audio(clips / name)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) - len(speech)) <= 1  # 22.05 -> 48 -> 44.1 kHz rounds once more
    num_samples = min(len(samples), len(speech))
    min_corr = 0.998 if "u8" in name else 0.9999  # 8-bit PCM has ~48 dB SNR
    assert np.corrcoef(samples[:num_samples], speech[:num_samples])[0, 1] > min_corr


@pytest.mark.parametrize("name", list(LOSSY))
def test_load_lossy_formats_match_original(clips: Path, speech: np.ndarray, name: str) -> None:
    samples = load_audio(clips / name)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert 0 <= len(samples) - len(speech) <= LOSSY[name][1]
    lag, corr = best_lag_correlation(samples, speech)
    assert abs(lag) <= LOSSY[name][1] and corr > 0.99


def test_load_averages_channels(tmp_path: Path, speech: np.ndarray) -> None:
    path = tmp_path / "left_only.wav"
    left_only = np.stack([speech, np.zeros_like(speech)], axis=1)
    soundfile.write(str(path), left_only, SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path), speech / 2)


@pytest.mark.parametrize(
    "make_bytes",
    [
        pytest.param(lambda wav: np.random.default_rng(0).bytes(20_000), id="random"),
        pytest.param(lambda wav: wav[:20], id="truncated-header"),
        pytest.param(lambda wav: b"hello, this is a text file renamed to .wav\n" * 50, id="text"),
    ],
)
def test_load_rejects_unreadable_bytes(clips: Path, make_bytes) -> None:
    data = make_bytes((clips / "speech.wav").read_bytes())
    with pytest.raises(AudioError, match="corrupt, or not one of wav, flac, mp3, ogg"):
        load_audio(data)


def test_load_rejects_empty_missing_zero_length_and_nan(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="empty"):
        load_audio(b"")
    with pytest.raises(AudioError, match="Cannot read the audio file"):
        load_audio(tmp_path / "missing.wav")
    soundfile.write(str(tmp_path / "zero.wav"), np.zeros(0, np.float32), SAMPLE_RATE)
    with pytest.raises(AudioError, match="zero length"):
        load_audio(tmp_path / "zero.wav")
    nan_samples = np.array([0.1, np.nan, 0.2], np.float32)
    soundfile.write(str(tmp_path / "nan.wav"), nan_samples, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN or infinite"):
        load_audio(tmp_path / "nan.wav")


def test_load_enforces_duration_limits(clips: Path, speech: np.ndarray) -> None:
    seconds = f"{duration_seconds(speech):.2f} s"
    with pytest.raises(AudioError, match=rf"too short: {seconds} \(minimum 10 s\)"):
        load_audio(clips / "speech.mp3", min_seconds=10)
    with pytest.raises(AudioError, match=rf"too long: {seconds} \(maximum 1.5 s\)"):
        load_audio(clips / "speech.mp3", max_seconds=1.5)
    assert len(load_audio(clips / "speech.mp3", min_seconds=1, max_seconds=10)) == len(speech)



# ---------------------------------------------------------------- load_clip


def test_load_clip_native_is_the_decoded_mono_signal(clips: Path, speech: np.ndarray) -> None:
    clip = load_clip(clips / "speech.flac", min_seconds=1.0, max_seconds=30.0)
    pcm = soundfile.read(str(clips / "speech.wav"), dtype="int16")[0]
    assert clip.native_rate == ESPEAK_RATE and clip.native.dtype == np.float32
    np.testing.assert_array_equal(clip.native, pcm.astype(np.float32) / 32768)  # bit-exact for mono
    np.testing.assert_array_equal(clip.samples, speech)
    assert clip.seconds == len(pcm) / ESPEAK_RATE


def test_load_clip_mixes_channels_at_the_files_rate(clips: Path) -> None:
    stereo, rate = soundfile.read(str(clips / "speech_48k_stereo.wav"), dtype="float32")
    clip = load_clip(clips / "speech_48k_stereo.wav", min_seconds=1.0, max_seconds=30.0)
    assert clip.native_rate == rate == 48_000
    np.testing.assert_array_equal(clip.native, stereo.mean(axis=1, dtype=np.float32))
    np.testing.assert_array_equal(clip.samples, load_audio(clips / "speech_48k_stereo.wav"))
    assert len(clip.samples) == round(len(clip.native) * SAMPLE_RATE / 48_000)


def test_load_clip_pyav_formats_keep_their_rate(clips: Path) -> None:
    webm = load_clip(clips / "speech.webm", min_seconds=1.0, max_seconds=30.0)
    m4a = load_clip(clips / "speech.m4a", min_seconds=1.0, max_seconds=30.0)
    assert (webm.native_rate, m4a.native_rate) == (48_000, ESPEAK_RATE)
    np.testing.assert_array_equal(webm.samples, load_audio(clips / "speech.webm"))
    assert webm.seconds == pytest.approx(m4a.seconds, abs=0.1)


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_load_clip_limit_is_inclusive(tmp_path: Path, fmt: str) -> None:
    exact = np.full(2 * 16_000, 0.25, np.float32)  # exactly 2 s at 16 kHz
    soundfile.write(str(tmp_path / f"exact.{fmt}"), exact, 16_000)
    soundfile.write(str(tmp_path / f"over.{fmt}"), np.append(exact, exact[:1]), 16_000)
    clip = load_clip(tmp_path / f"exact.{fmt}", min_seconds=2.0, max_seconds=2.0)
    assert (clip.native_rate, clip.seconds, len(clip.samples)) == (16_000, 2.0, 2 * SAMPLE_RATE)
    with pytest.raises(AudioError, match=r"too long: 2\.00 s \(maximum 2 s\)"):
        load_clip(tmp_path / f"over.{fmt}", min_seconds=1.0, max_seconds=2.0)


def test_load_clip_streamed_wav_read_to_eof_within_the_limit(speech: np.ndarray) -> None:
    # A streamed WAV (unknown-size header) is read to EOF: within the limit it decodes in full.
    data = b"".join(stream(speech, "wav")[0])
    clip = load_clip(data, min_seconds=1.0, max_seconds=30.0)
    assert clip.native_rate == SAMPLE_RATE and len(clip.native) == len(speech)
    with pytest.raises(AudioError, match=r"too long: \d\.\d\d s \(maximum 1 s\)"):
        load_clip(data, min_seconds=0.5, max_seconds=1.0)


# ---------------------------------------------------------------- encode_audio / StreamEncoder

# Extra decoded samples allowed per format: ADTS has no field for AAC's 1024-sample priming, so
# it decodes with the priming plus padding to a whole frame; a streamed mp3 has no LAME tag, so
# it keeps LAME's 1105-sample delay plus padding to a 1152-sample frame.
WHOLE_FILE_PADDING = {"wav": (0, 0), "flac": (0, 0), "mp3": (0, 0), "opus": (-2, 2), "aac": (1024, 2047)}
STREAM_PADDING = {**WHOLE_FILE_PADDING, "mp3": (1105, 1105 + 1151)}


def priming(fmt: str, padding: dict[str, tuple[int, int]]) -> int:
    return padding[fmt][0] if fmt in ("aac", "mp3") else 0


def assert_decodes_to(data: bytes, fmt: str, speech: np.ndarray, padding: dict[str, tuple[int, int]]) -> None:
    decoded = load_audio(data)
    low, high = padding[fmt]
    assert low <= len(decoded) - len(speech) <= high
    start = priming(fmt, padding)
    aligned = decoded[start : start + len(speech)]
    assert np.corrcoef(aligned, speech)[0, 1] > (0.9999 if fmt in ("wav", "flac") else 0.99)


@pytest.mark.parametrize("fmt", list(WHOLE_FILE_PADDING))
def test_encode_round_trips(speech: np.ndarray, fmt: str) -> None:
    assert_decodes_to(encode_audio(speech, fmt), fmt, speech, WHOLE_FILE_PADDING)


def test_encode_wav_and_flac_are_exact_int16(speech: np.ndarray) -> None:
    expected = float_to_int16(speech).astype(np.float32) / 32768
    np.testing.assert_array_equal(load_audio(encode_audio(speech, "wav")), expected)
    np.testing.assert_array_equal(load_audio(encode_audio(speech, "flac")), expected)


def test_encode_pcm_is_raw_int16(speech: np.ndarray) -> None:
    data = encode_audio(speech, "pcm")
    assert len(data) == 2 * len(speech)
    np.testing.assert_array_equal(np.frombuffer(data, "<i2"), float_to_int16(speech))


def test_float_to_int16_clips_and_rounds() -> None:
    values = np.array([-2.0, -1.0, -0.5, 0.0, 1.4 / 32768, 1.6 / 32768, 0.5, 1.0, 2.0], np.float32)
    expected = [-32768, -32768, -16384, 0, 1, 2, 16384, 32767, 32767]
    np.testing.assert_array_equal(float_to_int16(values), expected)


def test_unknown_format_lists_valid_ones(speech: np.ndarray) -> None:
    with pytest.raises(AudioError, match="choose one of: wav, pcm, flac, mp3, opus, aac"):
        encode_audio(speech, "ogg")
    with pytest.raises(AudioError, match="'m4a'"):
        StreamEncoder("m4a")
    assert CONTENT_TYPES == {
        "wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac",
        "mp3": "audio/mpeg", "opus": "audio/opus", "aac": "audio/aac",
    }  # fmt: skip


def stream(speech: np.ndarray, fmt: str, chunk_samples: int = SAMPLE_RATE // 10) -> tuple[list[bytes], bytes]:
    encoder = StreamEncoder(fmt)
    pushed = [encoder.push(speech[i : i + chunk_samples]) for i in range(0, len(speech), chunk_samples)]
    return pushed, encoder.finish()


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus", "aac"])
def test_stream_encoder_decodes_and_flows_during_generation(speech: np.ndarray, fmt: str) -> None:
    pushed, tail = stream(speech, fmt)
    data = b"".join(pushed) + tail
    assert_decodes_to(data, fmt, speech, STREAM_PADDING)
    # Bytes must leave while audio is generated, not only at finish(): most 100 ms pushes yield.
    assert sum(map(bool, pushed)) >= 0.8 * len(pushed)
    assert len(tail) < 0.1 * len(data)


def test_stream_encoder_pcm_and_wav_bytes(speech: np.ndarray) -> None:
    pushed, tail = stream(speech, "pcm")
    assert b"".join(pushed) + tail == encode_audio(speech, "pcm")
    pushed, tail = stream(speech, "wav")
    data = b"".join(pushed) + tail
    assert data[:4] == b"RIFF" and data[4:8] == b"\xff\xff\xff\xff" and data[40:44] == b"\xff\xff\xff\xff"
    assert data[44:] == encode_audio(speech, "pcm") and tail == b""
    assert StreamEncoder("wav").finish()[:4] == b"RIFF"  # no audio is still a valid stream


def test_ffmpeg_reads_streamed_wav(tmp_path: Path, speech: np.ndarray) -> None:
    path = tmp_path / "stream.wav"
    path.write_bytes(b"".join(stream(speech, "wav")[0]))
    out = subprocess.run([tool("ffmpeg"), "-v", "quiet", "-i", str(path), "-f", "s16le", "-"], capture_output=True)
    np.testing.assert_array_equal(np.frombuffer(out.stdout, "<i2"), float_to_int16(speech))


# ---------------------------------------------------------------- signal helpers


@pytest.mark.parametrize("speed", [0.5, 2.0, 4.0])
def test_time_stretch_keeps_pitch_of_a_sine(speed: float) -> None:
    tone = sine(220.0, 3.0)
    stretched = time_stretch(tone, speed)
    assert len(stretched) / len(tone) == pytest.approx(1 / speed, rel=0.02)
    assert dominant_hz(stretched) == pytest.approx(220.0, rel=0.02)
    middle = stretched[len(stretched) // 8 : -len(stretched) // 8]  # WSOLA keeps the amplitude steady
    assert np.abs(middle).max() == pytest.approx(0.5, rel=0.03)
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_time_stretch_speech_duration_and_range(speech: np.ndarray) -> None:
    assert len(time_stretch(speech, 2.0)) == pytest.approx(len(speech) / 2, rel=0.02)
    assert len(time_stretch(speech, 0.8)) == pytest.approx(len(speech) / 0.8, rel=0.02)
    np.testing.assert_array_equal(time_stretch(speech, 1.0), speech)
    for speed in (0.2, 4.5, float("nan")):
        with pytest.raises(AudioError, match=r"between 0\.25 and 4\.0"):
            time_stretch(speech, speed)


@pytest.mark.parametrize("target_lufs", [-16.0, -23.0])
def test_normalize_loudness_hits_target(speech: np.ndarray, target_lufs: float) -> None:
    meter = pyloudnorm.Meter(SAMPLE_RATE)
    for gain in (0.05, 1.0):  # from quiet and from loud (needs peak limiting at -16)
        out = normalize_loudness(speech * gain, target_lufs)
        assert meter.integrated_loudness(out.astype(np.float64)) == pytest.approx(target_lufs, abs=0.5)
        assert np.abs(out).max() <= CEILING + 1e-6


def test_normalize_loudness_leaves_short_and_silent_clips(speech: np.ndarray) -> None:
    short = speech[: SAMPLE_RATE // 5]
    np.testing.assert_array_equal(normalize_loudness(short), short)
    silence = np.zeros(SAMPLE_RATE, np.float32)
    np.testing.assert_array_equal(normalize_loudness(silence), silence)


def test_trim_silence_removes_padding(speech: np.ndarray) -> None:
    core = trim_silence(speech, pad_ms=0)
    padded = np.concatenate([np.zeros(SAMPLE_RATE), speech, np.zeros(2 * SAMPLE_RATE)]).astype(np.float32)
    noise = np.random.default_rng(0).normal(0, 1e-4, len(padded)).astype(np.float32)  # -80 dBFS hiss
    trimmed = trim_silence(padded + noise, pad_ms=50)
    pad, hop = int(0.05 * SAMPLE_RATE), SAMPLE_RATE // 100
    assert len(core) + 2 * pad - hop <= len(trimmed) <= len(core) + 2 * pad + 2 * hop
    assert len(trimmed) < len(speech) + 2 * pad
    assert trim_silence(np.zeros(10, np.float32)).size == 10


def test_is_silent_threshold() -> None:
    assert is_silent(np.zeros(100, np.float32)) and is_silent(np.zeros(0, np.float32))
    assert is_silent(sine(440, 0.1, amplitude=10 ** (-70 / 20)))
    assert not is_silent(sine(440, 0.1, amplitude=10 ** (-50 / 20)))
    assert not is_silent(sine(440, 0.1, amplitude=0.1), threshold_db=-30)
