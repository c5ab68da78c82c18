"""Audio out: encode responses in the OpenAI speech formats (whole files and incremental streams), and
the small signal helpers the API needs (int16 conversion, loudness, silence trimming, pitch-preserving
speed change).

soxr, PyAV and pyloudnorm are imported inside functions: the engine must stay importable with only
torch and numpy installed.
"""
from __future__ import annotations

import io
import struct
from fractions import Fraction
from typing import TYPE_CHECKING, cast

import numpy as np

from engine.audio import SAMPLE_RATE, AudioError, duration_seconds

if TYPE_CHECKING:
    from av.audio.stream import AudioStream

OPUS_SAMPLE_RATE = 48000  # libopus takes only 8/12/16/24/48 kHz, so opus output is 48 kHz
# The types OpenAI's /v1/audio/speech answers with; "opus" is an Ogg Opus stream.
CONTENT_TYPES: dict[str, str] = {
    "wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac",
    "mp3": "audio/mpeg", "opus": "audio/opus", "aac": "audio/aac",
}
# format -> (PyAV container, codec, bit rate; flac ignores it)
_AV_FORMATS: dict[str, tuple[str, str, int]] = {
    "mp3": ("mp3", "libmp3lame", 128_000), "opus": ("ogg", "libopus", 64_000),
    "aac": ("adts", "aac", 128_000), "flac": ("flac", "flac", 0),
}
# ffmpeg flushes each packet to an unseekable output at once, but Ogg pages hold 1 s of audio by
# default: 100 ms pages keep opus bytes flowing during generation.
_OGG_STREAM_OPTIONS = {"page_duration": "100000"}
_UNKNOWN_SIZE = 0xFFFFFFFF  # RIFF/data size of a WAV stream whose length is not known yet
_INT16_SCALE = 32768.0  # the scale soundfile and ffmpeg read int16 with, so k / 32768 -> k


def float_to_int16(samples: np.ndarray) -> np.ndarray:
    """Round to int16 at the 32768 scale readers use (decoded int16 audio round-trips exactly), clipped."""
    scaled = np.rint(np.asarray(samples, dtype=np.float32) * _INT16_SCALE)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def encode_audio(samples: np.ndarray, fmt: str, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Encode mono float samples as a complete `fmt` file (opus is resampled to 48 kHz)."""
    fmt = _check_format(fmt)
    if fmt in ("pcm", "wav"):
        pcm = _pcm_bytes(samples)
        return pcm if fmt == "pcm" else _wav_header(sample_rate, len(pcm)) + pcm
    # Seekable output lets muxers finish their headers (mp3 LAME tag with the encoder delay, flac length).
    writer = _AvWriter(fmt, sample_rate, io.BytesIO())
    writer.write(samples)
    writer.close()
    return writer.file.getvalue()


class StreamEncoder:
    """Incremental encoder for a streaming HTTP response: send what push() returns as soon as PCM
    is generated, then what finish() returns. opus is resampled to 48 kHz; wav starts with a
    header whose sizes are 0xFFFFFFFF (unknown), which ffmpeg, libsndfile and browsers read to EOF."""

    def __init__(self, fmt: str, sample_rate: int = SAMPLE_RATE) -> None:
        self.fmt = _check_format(fmt)
        self.content_type = CONTENT_TYPES[self.fmt]
        self._header = _wav_header(sample_rate, _UNKNOWN_SIZE) if self.fmt == "wav" else b""
        self._sink = _ChunkSink()
        self._writer = _AvWriter(self.fmt, sample_rate, self._sink) if self.fmt in _AV_FORMATS else None

    def push(self, samples: np.ndarray) -> bytes:
        if self._writer is None:
            return self._take_header() + _pcm_bytes(samples)
        self._writer.write(samples)
        return self._sink.take()

    def finish(self) -> bytes:
        if self._writer is None:
            return self._take_header()  # a stream without audio is still a valid, empty wav
        self._writer.close()
        return self._sink.take()

    def _take_header(self) -> bytes:
        header, self._header = self._header, b""
        return header


class _ChunkSink(io.BytesIO):
    """Output that PyAV sees as unseekable, so muxers never go back to patch a header and every
    byte written can be sent at once."""

    def seekable(self) -> bool:
        return False

    def take(self) -> bytes:
        data = self.getvalue()
        self.seek(0)
        self.truncate()
        return data


class _AvWriter:
    """One PyAV output container: mono float samples in, container bytes out to `file`."""

    def __init__(self, fmt: str, sample_rate: int, file: io.BytesIO) -> None:
        import av
        import soxr

        container_format, codec, bit_rate = _AV_FORMATS[fmt]
        self.file = file
        options = _OGG_STREAM_OPTIONS if container_format == "ogg" and not file.seekable() else {}
        self._container = av.open(file, mode="w", format=container_format, container_options=options)
        self._rate = OPUS_SAMPLE_RATE if fmt == "opus" else sample_rate
        self._stream = cast("AudioStream", self._container.add_stream(codec, rate=self._rate, layout="mono"))
        self._stream.bit_rate = bit_rate
        self._resampler = None
        if self._rate != sample_rate:
            self._resampler = soxr.ResampleStream(sample_rate, self._rate, 1, dtype="float32", quality="HQ")
        self._num_samples = 0

    def write(self, samples: np.ndarray, last: bool = False) -> None:
        import av

        samples = np.clip(_as_mono(samples), -1.0, 1.0)
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples, last=last)
        if len(samples) == 0:
            return
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
        frame.sample_rate, frame.time_base, frame.pts = self._rate, Fraction(1, self._rate), self._num_samples
        self._num_samples += len(samples)
        self._container.mux(self._stream.encode(frame))

    def close(self) -> None:
        self.write(np.zeros(0, np.float32), last=True)  # drains the resampler's filter tail
        self._container.mux(self._stream.encode(None))
        self._container.close()


def _check_format(fmt: str) -> str:
    if fmt not in CONTENT_TYPES:
        raise AudioError(f"Unsupported audio format {fmt!r}; choose one of: {', '.join(CONTENT_TYPES)}.")
    return fmt


def _as_mono(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples, dtype=np.float32)
    assert samples.ndim == 1, f"expected mono samples [num_samples], got shape {samples.shape}"
    return samples


def _pcm_bytes(samples: np.ndarray) -> bytes:
    return float_to_int16(_as_mono(samples)).astype("<i2", copy=False).tobytes()


def _wav_header(sample_rate: int, num_data_bytes: int) -> bytes:
    """44-byte header of a 16-bit mono PCM WAV holding `num_data_bytes` of samples."""
    riff = struct.pack("<4sI4s", b"RIFF", min(num_data_bytes + 36, _UNKNOWN_SIZE), b"WAVE")
    fmt_chunk = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return riff + fmt_chunk + struct.pack("<4sI", b"data", num_data_bytes)


def normalize_loudness(
    samples: np.ndarray, target_lufs: float = -16.0, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Gain to `target_lufs` integrated loudness (ITU-R BS.1770) with peaks limited to -1 dBFS.
    Clips too short to measure (<= 0.4 s) or silent (gated out) are returned unchanged."""
    import pyloudnorm

    samples = _as_mono(samples)
    meter = pyloudnorm.Meter(sample_rate)
    out, gain_db = samples, 0.0
    if duration_seconds(samples, sample_rate) > meter.block_size:
        for _ in range(3):  # limiting lowers the loudness a little: re-aim until within 0.1 LU
            error_db = target_lufs - meter.integrated_loudness(out.astype(np.float64))
            if not np.isfinite(error_db) or abs(error_db) < 0.1:
                break
            gain_db += error_db
            gained = samples * np.float32(10.0 ** (gain_db / 20.0))
            out = _limit_peaks(gained, ceiling=10.0 ** (-1.0 / 20.0), sample_rate=sample_rate)
    return np.array(out, dtype=np.float32)


def _limit_peaks(samples: np.ndarray, ceiling: float, sample_rate: int, window_ms: float = 5.0) -> np.ndarray:
    """Brick-wall limiter: the gain each sample needs, min-filtered and then averaged over the same
    centred window. The average at i only sees minima of windows that contain i, so it never
    exceeds sample i's own gain (no overshoot), and it changes smoothly (no clicks)."""
    half = max(1, int(sample_rate * window_ms / 2000))
    need = np.minimum(1.0, ceiling / np.maximum(np.abs(samples), 1e-12))
    if need.min() >= 1.0:
        return samples
    width = 2 * half + 1
    held = np.lib.stride_tricks.sliding_window_view(np.pad(need, half, constant_values=1.0), width).min(1)
    gain = np.convolve(np.pad(held, half, mode="edge"), np.full(width, 1.0 / width), mode="valid")
    return (samples * gain).astype(np.float32)


def trim_silence(
    samples: np.ndarray, threshold_db: float = -45.0, pad_ms: float = 50.0, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Drop leading/trailing 10 ms frames more than `threshold_db` below the loudest frame (relative,
    so quiet recordings trim like loud ones), keeping `pad_ms` of margin around what remains."""
    samples = _as_mono(samples)
    hop = sample_rate // 100
    num_frames = len(samples) // hop
    if num_frames == 0:
        return samples.copy()
    frames = samples[: num_frames * hop].reshape(num_frames, hop).astype(np.float64)
    level_db = 10.0 * np.log10(np.mean(frames**2, axis=1) + 1e-20)
    loud = np.flatnonzero(level_db > level_db.max() + threshold_db)
    pad = int(sample_rate * pad_ms / 1000)
    return samples[max(0, loud[0] * hop - pad) : (loud[-1] + 1) * hop + pad].copy()


def time_stretch(samples: np.ndarray, speed: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Play `speed` times faster (duration / speed) at the same pitch, by WSOLA: 40 ms Hann frames
    overlap-added at a fixed hop, each read from within +-10 ms of its nominal input position where
    it best continues the previous frame's waveform (no phase-vocoder phasiness on speech)."""
    if not (np.isfinite(speed) and 0.25 <= speed <= 4.0):
        raise AudioError(f"speed must be between 0.25 and 4.0, got {speed}.")
    samples = _as_mono(samples)
    if speed == 1.0 or len(samples) == 0:
        return samples.copy()
    frame, tolerance = int(0.04 * sample_rate) // 2 * 2, int(0.01 * sample_rate)
    hop = frame // 2
    window = np.hanning(frame + 1)[:frame]  # periodic Hann: copies at hop = frame / 2 sum to 1
    num_out = round(len(samples) / speed)
    num_frames = num_out // hop + 2
    margin = tolerance + frame
    x = np.pad(samples.astype(np.float64), (margin, margin + int(num_frames * hop * speed) + frame))
    out = np.zeros(num_frames * hop + frame)
    # Frame k is centred on input sample k*hop*speed and on output sample hop + k*hop, so out[hop:]
    # is fully overlapped and starts at input sample 0.
    pos = margin - hop
    for k in range(1, num_frames + 1):
        out[(k - 1) * hop : (k - 1) * hop + frame] += window * x[pos : pos + frame]
        nominal = margin - hop + round(k * hop * speed)
        pos = _best_continuation(x, natural=pos + hop, nominal=nominal, frame=frame, tolerance=tolerance)
    return out[hop : hop + num_out].astype(np.float32)


def _best_continuation(x: np.ndarray, natural: int, nominal: int, frame: int, tolerance: int) -> int:
    """The start within nominal +- tolerance whose frame correlates best with x[natural:]."""
    template = x[natural : natural + frame]
    region = x[nominal - tolerance : nominal + tolerance + frame]
    size = 1 << int(np.ceil(np.log2(len(region) + frame)))
    corr = np.fft.irfft(np.fft.rfft(region, size) * np.conj(np.fft.rfft(template, size)), size)
    return nominal - tolerance + int(np.argmax(corr[: 2 * tolerance + 1]))
