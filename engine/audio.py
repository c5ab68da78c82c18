"""Audio in: decode any upload to mono float32 at 44.1 kHz (and at its own rate) within bounds an
anonymous upload cannot stretch (size, channels, rate and length checked from the header, length
again while decoding, two decodes at a time, regular files only). Audio out is audio_out.py.

soundfile, soxr and PyAV are imported inside functions: the engine must stay importable with only
torch and numpy installed.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import io
import mmap
import os
import stat
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE = 44100
INPUT_FORMATS = "wav, flac, mp3, ogg (vorbis/opus), webm, m4a/aac"

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
    from av.error import FFmpegError

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.audio[0]  # IndexError: no audio track (text, video-only)
            rate = stream.codec_context.sample_rate
            declared = _av_seconds(container, stream)
            _check_header(stream.codec_context.channels, rate, declared, max_seconds, margin=_AV_ESTIMATE_MARGIN)
            return _collect_mono(_av_blocks(container, stream), rate, max_seconds), rate
    except AudioError:
        raise
    except (FFmpegError, IndexError, ValueError) as exc:
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
