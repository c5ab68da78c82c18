"""The voice library API: /v1/voices (create from an upload, list, get, audio, rename, delete).

An upload is decoded and checked (1 to 30 s, not silent), encoded once on the engine thread, and kept
by the Store with its transcript and codes. Codes are cached by the clip's content hash, so the same
clip uploaded again (under another name) is not encoded again.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from playground.api_errors import APIError
from playground.api_metrics import ApiCounters
from playground.api_synthesis import decode_clip
from playground.state import AppState
from playground.store import DuplicateName, Voice, audio_sha256, check_name, check_transcript


class RenameBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


def voice_json(voice: Voice) -> dict[str, Any]:
    return {"id": voice.id, "object": "voice", "name": voice.name, "transcript": voice.transcript,
            "created_at": int(voice.created_at), "duration_s": round(voice.duration_s, 3),
            "audio_url": f"/v1/voices/{voice.id}/audio"}


def _name_error(exc: ValueError) -> APIError:
    if isinstance(exc, DuplicateName):
        return APIError(409, str(exc), param="name", code="voice_name_taken")
    return APIError(400, str(exc), param="name", code="invalid_name")


def _checked_fields(state: AppState, name: str, transcript: str) -> tuple[str, str]:
    """Cheap checks first, so a bad name never costs a decode and an encode."""
    try:
        name = check_name(name)
        if state.store.get_voice(name) is not None:
            raise DuplicateName(f"a voice named {name!r} already exists; choose another name")
    except ValueError as exc:
        raise _name_error(exc) from exc
    try:
        return name, check_transcript(transcript)
    except ValueError as exc:
        raise APIError(400, str(exc), param="transcript") from exc


async def _codes(state: AppState, counters: ApiCounters, samples: np.ndarray) -> np.ndarray:
    cached = await run_in_threadpool(state.store.cached_codes, audio_sha256(samples))
    if cached is not None:
        return cached
    codes = await state.engine.run(lambda engine: engine.encode_audio(samples))
    counters.voice_encodes += 1
    return codes.numpy()


def _require(state: AppState, voice_id: str) -> Voice:
    voice = state.store.get_voice(voice_id)
    if voice is None:
        raise APIError(404, f"No voice {voice_id!r} (GET /v1/voices lists them).", param="voice_id",
                       code="voice_not_found")
    return voice


def router(state: AppState, counters: ApiCounters) -> APIRouter:
    r = APIRouter(prefix="/v1/voices")

    @r.post("", status_code=201)
    async def create_voice(name: str = Form(), transcript: str = Form(),
                           file: UploadFile = File()) -> dict[str, Any]:
        name, transcript = _checked_fields(state, name, transcript)
        samples = await decode_clip(await file.read(), "file")
        codes = await _codes(state, counters, samples)
        try:
            voice = await run_in_threadpool(state.store.add_voice, name, samples, transcript, codes)
        except ValueError as exc:  # e.g. the same name taken meanwhile by a concurrent upload
            raise _name_error(exc) from exc
        return voice_json(voice)

    @r.get("")
    async def list_voices() -> dict[str, Any]:
        return {"object": "list", "data": [voice_json(v) for v in state.store.list_voices()]}

    @r.get("/{voice_id}")
    async def get_voice(voice_id: str) -> dict[str, Any]:
        return voice_json(_require(state, voice_id))

    @r.get("/{voice_id}/audio", response_model=None)
    async def voice_audio(voice_id: str) -> FileResponse:
        voice = _require(state, voice_id)
        return FileResponse(state.store.voice_audio_path(voice.id), media_type="audio/wav",
                            filename=f"{voice.name}.wav")

    @r.patch("/{voice_id}")
    async def rename_voice(voice_id: str, body: RenameBody) -> dict[str, Any]:
        voice = _require(state, voice_id)
        try:
            return voice_json(state.store.rename_voice(voice.id, body.name))
        except ValueError as exc:
            raise _name_error(exc) from exc

    @r.delete("/{voice_id}")
    async def delete_voice(voice_id: str) -> dict[str, Any]:
        voice = _require(state, voice_id)
        state.store.delete_voice(voice.id)
        return {"id": voice.id, "object": "voice.deleted", "deleted": True}

    return r

