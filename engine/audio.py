"""Audio in and out: decode any upload to mono float32 at 44.1 kHz (and at its own rate) within
bounds an anonymous upload cannot stretch (size, channels, rate and length checked from the header,
length again while decoding, two decodes at a time, regular files only), encode responses in the
OpenAI speech formats (whole files and incremental streams), and the small signal helpers the
API needs (int16 conversion, loudness, silence trimming, pitch-preserving speed change).

soundfile, soxr, PyAV and pyloudnorm are imported inside functions: the engine must stay
importable with only torch and numpy installed.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import io
import mmap
import os
import stat
import struct
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE = 44100
OPUS_SAMPLE_RATE = 48000  # libopus takes only 8/12/16/24/48 kHz, so opus output is 48 kHz
INPUT_FORMATS = "wav, flac, mp3, ogg (vorbis/opus), webm, m4a/aac"
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

# Upload limits, checked from the container's header before decoding and again while decoding.
MAX_UPLOAD_BYTES = 25 << 20  # the server's upload limit (the playground's max_upload_mb)
MAX_CHANNELS = 8  # 7.1 surround; FLAC's own maximum
MIN_INPUT_RATE, MAX_INPUT_RATE = 8_000, 192_000  # telephone to studio rates
MAX_DECODE_SECONDS = 600.0  # the longest audio decoded for a caller that sets no limit (CLI, tests)
MAX_CONCURRENT_DECODES = 2  # each holds at most max_seconds of mono audio and one block
DECODE_WAIT_SECONDS = 10.0  # a decode waits this long for a slot, then the caller hears "busy"
DECODE_DEADLINE_SECONDS = 10.0  # one-sample packets make a small file decode for minutes: stop it
_decode_slots = threading.BoundedSemaphore(MAX_CONCURRENT_DECODES)
_BLOCK_FRAMES = 1 << 15  # frames read at a time: 1 MiB of float32 at 8 channels
_SF_UNKNOWN_FRAMES = 2**63 - 1  # libsndfile's length of a streamed file whose header leaves it open
_AV_ESTIMATE_MARGIN = 1.25  # ffmpeg estimates raw AAC's length from its bit rate; decoding is exact


class AudioError(ValueError):
    """Unusable audio or an unsupported format; the message says what the user can change."""


class DecoderBusyError(AudioError):
    """Every decode slot stayed taken for DECODE_WAIT_SECONDS: nothing wrong with the audio, retry
    later (an HTTP API answers 503)."""


@dataclass(frozen=True)
class DecodedClip:
    """An uploaded clip: mono float32 at SAMPLE_RATE (what the codec encodes) and the same audio, mono,
    at the file's own rate (what a voice library stores losslessly)."""

    samples: np.ndarray  # float32 [n] at SAMPLE_RATE
    native: np.ndarray  # float32 [m] at native_rate
    native_rate: int

    @property
    def seconds(self) -> float:
        return len(self.native) / self.native_rate


def load_clip(source: bytes | str | Path, *, min_seconds: float, max_seconds: float) -> DecodedClip:
    """Decode an upload (raw bytes or the path of a regular file) to a DecodedClip. The container's
    channels, rate and length are checked before decoding, and decoding stops once more than
    `max_seconds` is read: a decode never holds more than max_seconds of mono audio."""
    with _decode_slot():
        native, native_rate = _decode(_read_source(source), min(max_seconds, MAX_DECODE_SECONDS))
        _check_clip(native, native_rate, min_seconds)
        return DecodedClip(resample(native, native_rate, SAMPLE_RATE), native, native_rate)


def load_audio(
    source: bytes | str | Path, *, max_seconds: float | None = None, min_seconds: float | None = None
) -> np.ndarray:
    """Decode `source` (raw bytes or a file path) to mono float32 samples at SAMPLE_RATE."""
    limit = MAX_DECODE_SECONDS if max_seconds is None else max_seconds
    return load_clip(source, min_seconds=min_seconds or 0.0, max_seconds=limit).samples


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """High-quality (soxr HQ) sample-rate conversion of a mono float32 signal."""
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    if from_rate == to_rate:
        return samples
    import soxr

    return soxr.resample(samples, from_rate, to_rate, quality="HQ").astype(np.float32, copy=False)


def duration_seconds(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    return len(samples) / sample_rate


def is_silent(samples: np.ndarray, threshold_db: float = -60.0) -> bool:
    """True when the RMS level is at or below `threshold_db` dBFS (or there are no samples)."""
    if len(samples) == 0:
        return True
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) <= 10.0 ** (threshold_db / 20.0)


@contextmanager
def _decode_slot() -> Iterator[None]:
    """One of MAX_CONCURRENT_DECODES slots: a burst of uploads waits here instead of decoding side
    by side, and each decode gives its freed buffers back to the OS."""
    if not _decode_slots.acquire(timeout=DECODE_WAIT_SECONDS):
        raise DecoderBusyError("The server is busy decoding other uploads; try again in a few seconds.")
    try:
        yield
    except BaseException as exc:
        _forget_locals(exc)  # else a rejected upload's traceback holds its buffers past the trim below
        raise
    finally:
        _decode_slots.release()
        if (trim := _malloc_trim()) is not None:
            trim(0)  # glibc keeps freed buffers in its (per-thread) arenas: RSS would stay at its peak


def _forget_locals(exc: BaseException | None) -> None:
    """Clear the locals of every frame in `exc`'s traceback and down its chain of causes."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None


def _read_source(source: bytes | str | Path) -> bytes:
    data = _read_path(source) if isinstance(source, (str, Path)) else bytes(source)
    if not data:
        raise AudioError("The audio upload is empty (0 bytes); choose a recording and try again.")
    if len(data) > MAX_UPLOAD_BYTES:
        raise AudioError(f"The audio upload is larger than {MAX_UPLOAD_BYTES >> 20} MB; upload a shorter clip.")
    return data


def _read_path(path: str | Path) -> bytes:
    """A regular file's bytes, opened so that no path makes the server follow a symlink, block on a
    FIFO or read a device; at most MAX_UPLOAD_BYTES + 1 are read (/proc files claim size 0)."""
    name = Path(path).name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        reason = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise AudioError(f"Cannot read the audio file {name!r}: {reason}.") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise AudioError(f"Cannot read the audio file {name!r}: it is not a regular file.")
        with os.fdopen(fd, "rb", closefd=False) as file:
            return file.read(MAX_UPLOAD_BYTES + 1)
    finally:
        os.close(fd)


def _decode(data: bytes, max_seconds: float) -> tuple[np.ndarray, int]:
    """Mono float32 [num_samples] and the file's rate: soundfile first, PyAV for the rest."""
    import soundfile as sf

    try:
        with sf.SoundFile(io.BytesIO(data)) as file:
            rate, frames = file.samplerate, file.frames
            _check_header(file.channels, rate, None if frames == _SF_UNKNOWN_FRAMES else frames / rate, max_seconds)
            return _collect_mono(_sf_blocks(file), rate, max_seconds), rate
    except sf.LibsndfileError:
        # libsndfile cannot read mp4/webm/adts containers; ffmpeg decides whether this is audio.
        return _decode_av(data, max_seconds)


def _sf_blocks(file: Any) -> Iterator[np.ndarray]:
    buffer = np.empty((_BLOCK_FRAMES, file.channels), np.float32)  # one block, reused
    while len(block := file.read(out=buffer)):
        yield block  # [n, channels]


def _decode_av(data: bytes, max_seconds: float) -> tuple[np.ndarray, int]:
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.audio[0]  # IndexError: no audio track (text, video-only)
            rate = stream.codec_context.sample_rate
            declared = _av_seconds(container, stream)
            _check_header(stream.codec_context.channels, rate, declared, max_seconds, margin=_AV_ESTIMATE_MARGIN)
            return _collect_mono(_av_blocks(container, stream), rate, max_seconds), rate
    except AudioError:
        raise
    except (av.FFmpegError, IndexError, ValueError) as exc:
        raise AudioError(f"Could not decode the audio: corrupt, or not one of {INPUT_FORMATS}.") from exc


def _av_seconds(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None  # a live stream (MediaRecorder webm) declares none: the decode loop still stops


def _av_blocks(container: Any, stream: Any) -> Iterator[np.ndarray]:
    """[n, channels] float32 blocks; a frame whose rate or width differs from the header is refused
    (a chained Ogg or a crafted stream can change both mid-way)."""
    import av

    to_planar = av.AudioResampler(format="fltp")  # any sample format -> float [channels, n]
    header = (stream.codec_context.channels, stream.codec_context.sample_rate)
    for frame in container.decode(stream):
        if (frame.layout.nb_channels, frame.sample_rate) != header:
            raise AudioError("The audio changes its channels or sample rate mid-stream; re-export it as one file.")
        # opus, vorbis, aac and mp3 decode to fltp already: the resampler only costs time there.
        for out in [frame] if frame.format.name == "fltp" else to_planar.resample(frame):
            yield out.to_ndarray().T


def _check_header(
    channels: int, sample_rate: int, seconds: float | None, max_seconds: float, margin: float = 1.0
) -> None:
    """Reject from the container's own header, before decoding anything; `margin` spares lengths
    that are only estimates."""
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioError(f"The audio has {channels} channels (at most {MAX_CHANNELS}); export it as mono or stereo.")
    if not MIN_INPUT_RATE <= sample_rate <= MAX_INPUT_RATE:
        raise AudioError(
            f"Unsupported sample rate {sample_rate} Hz (allowed {MIN_INPUT_RATE}..{MAX_INPUT_RATE} Hz); "
            "re-export it at 44.1 or 48 kHz."
        )
    if seconds is not None and seconds > max_seconds * margin:
        raise AudioError(f"Audio too long: {seconds:.2f} s (maximum {max_seconds:g} s); trim it first.")


def _collect_mono(blocks: Iterator[np.ndarray], sample_rate: int, max_seconds: float) -> np.ndarray:
    """Mix each [n, channels] block to mono as it arrives, and stop as soon as more than
    max_seconds has been read: a header can lie about the length."""
    max_frames, deadline = int(max_seconds * sample_rate), time.monotonic() + DECODE_DEADLINE_SECONDS
    # An anonymous mapping, not the heap: glibc never trims a worker thread's arena top, so a
    # rejected upload's buffer would stay resident for good. Untouched pages cost nothing.
    mono = np.frombuffer(mmap.mmap(-1, 4 * max_frames + 4), np.float32)
    num_frames = 0
    for block in blocks:
        if num_frames + len(block) > max_frames:
            raise AudioError(f"Audio too long: over the maximum of {max_seconds:g} s; trim it first.")
        if time.monotonic() > deadline:
            raise AudioError(
                f"The audio took more than {DECODE_DEADLINE_SECONDS:g} s to decode; re-export it as WAV or FLAC."
            )
        out = mono[num_frames : num_frames + len(block)]
        if block.shape[1] == 1:
            out[:] = block[:, 0]  # mono stays bit-exact
        else:
            np.mean(block, axis=1, dtype=np.float32, out=out)
        num_frames += len(block)
    return mono[:num_frames]  # freed straight back to the OS when the caller drops it


def _check_clip(native: np.ndarray, sample_rate: int, min_seconds: float) -> None:
    if native.size == 0:
        raise AudioError("The audio contains no samples (zero length); upload a recording with sound.")
    if not np.isfinite(native).all():
        raise AudioError("The audio contains NaN or infinite sample values; re-export it as plain PCM.")
    if (seconds := len(native) / sample_rate) < min_seconds:
        raise AudioError(f"Audio too short: {seconds:.2f} s (minimum {min_seconds:g} s); use a longer clip.")


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
        self._writer = _AvWriter(self.fmt, sample_rate, _ChunkSink()) if self.fmt in _AV_FORMATS else None

    def push(self, samples: np.ndarray) -> bytes:
        if self._writer is None:
            return self._take_header() + _pcm_bytes(samples)
        self._writer.write(samples)
        return self._writer.file.take()

    def finish(self) -> bytes:
        if self._writer is None:
            return self._take_header()  # a stream without audio is still a valid, empty wav
        self._writer.close()
        return self._writer.file.take()

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
        self._stream = self._container.add_stream(codec, rate=self._rate, layout="mono")
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
