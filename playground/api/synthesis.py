"""The body of POST /v1/audio/speech and its translation into an engine `SynthesisRequest`.

OpenAI's fields (model, input, voice, response_format, speed, stream_format, instructions) plus our
extensions (references, temperature, top_p, top_k, seed, max_frames, chunk_length, ras). Unknown
fields are rejected rather than ignored, so no knob a client sets is silently dead.
"""
from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from engine import (
    AudioError,
    DecodedClip,
    DecoderBusyError,
    ReferenceInput,
    RequestError,
    SamplingParams,
    SynthesisRequest,
    check_text,
    random_seed,
)
from playground.api.errors import APIError, brief
from playground.api.metrics import MODEL_ID
from playground.clips import read_clip
from playground.state import AppState
from playground.store import RESERVED_NAMES, Voice

MODEL_ALIASES = frozenset({MODEL_ID, "tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-mini-tts-2025-12-15"})
MAX_REFERENCES = 8
MAX_INSTRUCTIONS_CHARS = 500
DECODE_RETRY_SECONDS = 5  # what a 503 for busy decoders asks the client to wait
_LEADING_SPEAKER_TAGS = re.compile(r"^(?:\s*<\|speaker:\d+\|>)*")
# The API parameter of an engine request field, where the names differ.
_PARAM_OF_FIELD = {"text": "input"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VoiceId(_Strict):
    id: str  # OpenAI's custom-voice object: {"id": "voice_..."}


class ReferenceBody(_Strict):
    audio: str = Field(description="base64 of an audio file (wav, flac, mp3, ogg, webm, m4a)")
    text: str = Field(description="what the clip says")


class SpeechBody(_Strict):
    model: str
    input: str
    voice: str | VoiceId = "default"
    response_format: Literal["wav", "pcm", "flac", "mp3", "opus", "aac"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] | None = None  # None: one complete file with timing headers
    instructions: str | None = None
    references: list[ReferenceBody] = Field(default_factory=list, max_length=MAX_REFERENCES)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    max_frames: int | None = None
    chunk_length: int | None = None
    ras: bool | None = None
    # "word": word start/end times aligned to `input` (a speech.audio.timestamps event before done in SSE;
    # with no stream_format the answer is JSON holding the audio and the words)
    timestamps: Literal["none", "word"] = "none"


def param_of(exc: ValueError) -> str | None:
    """The API parameter an engine error is about (RequestError.field), None when it names none."""
    field = exc.field if isinstance(exc, RequestError) else None
    return None if field is None else _PARAM_OF_FIELD.get(field, field)


def check_model(model: str) -> None:
    if model not in MODEL_ALIASES:
        raise APIError(404, f"The model {brief(model)} does not exist; use {MODEL_ID!r} (aliases: "
                       f"{', '.join(sorted(MODEL_ALIASES - {MODEL_ID}))}).", param="model", code="model_not_found")


def with_instructions(text: str, instructions: str | None) -> str:
    """S2 Pro takes free-form style tags like `[whispering]` inline; `instructions` becomes one at the
    start of the text (after any leading speaker tag, which must stay first)."""
    if instructions is None:
        return text
    tag = " ".join(instructions.split())
    if not tag or len(tag) > MAX_INSTRUCTIONS_CHARS or "[" in tag or "]" in tag:
        raise APIError(400, f"instructions must be 1 to {MAX_INSTRUCTIONS_CHARS} characters without square "
                       "brackets; they are sent to the model as a leading [tag].", param="instructions")
    head = _LEADING_SPEAKER_TAGS.match(text).end()  # pyright: ignore[reportOptionalMemberAccess] (a * pattern always matches)
    return f"{text[:head]}[{tag}] {text[head:].lstrip()}"


async def decode_clip(data: bytes, param: str) -> DecodedClip:
    """An uploaded clip (see playground.clips); APIError (400) otherwise."""
    try:
        return await run_in_threadpool(read_clip, data)
    except DecoderBusyError as exc:
        raise APIError(503, str(exc), param=param, code="server_busy",
                       headers={"Retry-After": str(DECODE_RETRY_SECONDS)}) from exc
    except AudioError as exc:
        raise APIError(400, str(exc), param=param, code="invalid_audio") from exc


def find_voice(state: AppState, voice: str | VoiceId) -> Voice | None:
    """The saved voice `voice` names (id or name) in the API's library, or None for the model's own
    voice; 404 if unknown."""
    name = voice.id if isinstance(voice, VoiceId) else voice
    if isinstance(voice, str) and name.strip().lower() in RESERVED_NAMES:
        return None
    found = state.store.get_voice(state.access.api_owner(), name)
    if found is None:
        raise _voice_not_found(name)
    return found


def _voice_not_found(name: str) -> APIError:
    return APIError(404, f"No voice {brief(name)}: use 'default' (or an OpenAI voice name) for the model's own "
                    "voice, or the id or name of a saved voice (GET /v1/voices).", param="voice",
                    code="voice_not_found")


async def references(state: AppState, body: SpeechBody) -> tuple[ReferenceInput, ...]:
    """The saved voice (as stored codes) first, then the inline clips (encoded by the engine)."""
    refs = []
    voice = find_voice(state, body.voice)
    if voice is not None:
        try:
            codes = await run_in_threadpool(state.store.voice_codes, state.access.api_owner(), voice.id)
        except KeyError:  # deleted since it was found: new requests get a 404, running ones finish
            raise _voice_not_found(voice.id) from None
        refs.append(ReferenceInput(voice.transcript, codes=tuple(map(tuple, codes.tolist()))))
    for i, ref in enumerate(body.references):
        param = f"references.{i}"
        if not ref.text.strip():
            raise APIError(400, "A reference needs the transcript of its clip.", param=f"{param}.text")
        try:
            data = base64.b64decode(ref.audio, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise APIError(400, "The reference audio is not valid base64.", param=f"{param}.audio") from exc
        transcript = ref.text.strip()
        try:
            check_text(transcript, "a reference transcript")
        except ValueError as exc:  # over-long, or a lone surrogate: before the clip costs a decode
            raise APIError(400, str(exc), param=f"{param}.text") from exc
        clip = await decode_clip(data, f"{param}.audio")
        refs.append(ReferenceInput(transcript, samples=clip.samples))
    return tuple(refs)


def synthesis_request(body: SpeechBody) -> tuple[SynthesisRequest, int]:
    """The engine request without references (checked before any clip is decoded) and the seed it
    uses (random when the client sent none)."""
    if not body.input.strip():
        raise APIError(400, "input is empty: nothing to synthesize.", param="input")
    seed = body.seed if body.seed is not None else random_seed()
    given: dict[str, Any] = {k: v for k, v in (("temperature", body.temperature), ("top_p", body.top_p),
                               ("top_k", body.top_k), ("ras", body.ras)) if v is not None}
    limits: dict[str, Any] = {k: v for k, v in (("max_frames", body.max_frames), ("chunk_length", body.chunk_length))
              if v is not None}
    try:
        sampling = SamplingParams(seed=seed, **given)
        req = SynthesisRequest(with_instructions(body.input, body.instructions), (), sampling, **limits)
    except ValueError as exc:
        raise APIError(400, str(exc), param=param_of(exc)) from exc
    return req, seed
