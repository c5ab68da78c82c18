"""S2 Pro inference engine: model, codec, prompt, sampler and the serving core (no web code).

This is the engine's public face: callers (the playground, the API, scripts) import these names from
`engine` and nothing deeper, so the inside can move without breaking them (tests/test_exports.py).
"""
from engine.alignment import ALIGN_WAIT_SECONDS, AlignerBusy, WordTime, align_words, alignable, as_json, to_srt, to_vtt
from engine.audio import MAX_UPLOAD_BYTES, SAMPLE_RATE, AudioError, DecodedClip, DecoderBusyError, is_silent, load_clip
from engine.audio_out import (
                           CONTENT_TYPES,
                           StreamEncoder,
                           encode_audio,
                           float_to_int16,
                           normalize_loudness,
                           time_stretch,
                           trim_silence,
)
from engine.checkpoint import DEFAULT_MODEL_ID, CheckpointError, resolve_model_path
from engine.loader import LoadedModel, load_model_dir, pick_device, pick_dtype
from engine.models.int8 import WEIGHTS
from engine.params import (
                           DEFAULT_CHUNK_LENGTH,
                           DEFAULT_MAX_FRAMES,
                           MAX_CHUNK_LENGTH,
                           MAX_FRAMES_LIMIT,
                           MAX_REFERENCE_SECONDS,
                           MAX_TEXT_CHARS,
                           MIN_CHUNK_LENGTH,
                           MIN_REFERENCE_SECONDS,
                           SEED_LIMIT,
                           RequestError,
                           SamplingParams,
                           random_seed,
)
from engine.prompt import dialogue_text, split_text
from engine.serving.admission import EngineBusy, EngineUnhealthy
from engine.serving.async_engine import AsyncEngine, StreamPiece
from engine.serving.engine import Engine
from engine.serving.engine_config import EngineConfig
from engine.serving.metrics import EngineMetrics, Histogram
from engine.serving.request import ChunkDone, ReferenceInput, SynthesisRequest, check_text
from engine.tools.tiny_checkpoint import write_tiny_checkpoint

__all__ = [
    "ALIGN_WAIT_SECONDS", "CONTENT_TYPES", "DEFAULT_CHUNK_LENGTH", "DEFAULT_MAX_FRAMES", "DEFAULT_MODEL_ID",
    "MAX_CHUNK_LENGTH", "MAX_FRAMES_LIMIT", "MAX_REFERENCE_SECONDS", "MAX_TEXT_CHARS", "MAX_UPLOAD_BYTES",
    "MIN_CHUNK_LENGTH", "MIN_REFERENCE_SECONDS", "SAMPLE_RATE", "SEED_LIMIT", "WEIGHTS", "AlignerBusy", "AsyncEngine",
    "AudioError", "CheckpointError", "ChunkDone", "DecodedClip", "DecoderBusyError", "Engine", "EngineBusy",
    "EngineConfig", "EngineMetrics", "EngineUnhealthy", "Histogram", "LoadedModel", "ReferenceInput", "RequestError",
    "SamplingParams", "StreamEncoder", "StreamPiece", "SynthesisRequest", "WordTime", "align_words", "alignable",
    "as_json", "check_text", "dialogue_text", "encode_audio", "float_to_int16", "is_silent", "load_clip",
    "load_model_dir", "normalize_loudness", "pick_device", "pick_dtype", "random_seed", "resolve_model_path",
    "split_text", "time_stretch", "to_srt", "to_vtt", "trim_silence", "write_tiny_checkpoint",
]
