"""The voice library API: /v1/voices (create from an upload, list, get, audio, rename, delete).

The library is the API's own (the key holder's; every visitor's with --shared-library). An upload is
decoded and checked (playground.clips), encoded once on the engine thread, and kept by the Store,
losslessly as FLAC at the clip's own rate, with its transcript and codes. Codes are cached by the
clip's content hash, so the same clip uploaded again (under another name) is not encoded again.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import quote

import numpy as np
from fastapi import APIRouter, File, Form, Response, UploadFile
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from playground.api.errors import APIError, brief
from playground.api.metrics import ApiCounters
from playground.api.synthesis import decode_clip
from playground.state import AppState
from playground.store import DuplicateName, LibraryFull, Voice, audio_sha256, check_name, check_transcript


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
    if isinstance(exc, LibraryFull):
        return APIError(409, str(exc), code="voice_library_full")
    return APIError(400, str(exc), param="name", code="invalid_name")


def _checked_fields(state: AppState, name: str, transcript: str) -> tuple[str, str]:
    """Cheap checks first, so a bad name never costs a decode and an encode."""
    try:
        name = check_name(name)
        if state.store.get_voice(state.access.api_owner(), name) is not None:
            raise DuplicateName(f"a voice named {brief(name)} already exists; choose another name")
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
    codes = await state.engine.encode_reference(samples)
    counters.voice_encodes.inc()
    return codes


def _not_found(voice_id: str) -> APIError:
    return APIError(404, f"No voice {brief(voice_id)} (GET /v1/voices lists them).", param="voice_id",
                    code="voice_not_found")


def _require(state: AppState, voice_id: str) -> Voice:
    voice = state.store.get_voice(state.access.api_owner(), voice_id)
    if voice is None:
        raise _not_found(voice_id)
    return voice


def router(state: AppState, counters: ApiCounters) -> APIRouter:
    r = APIRouter(prefix="/v1/voices")
    owner = state.access.api_owner()

    @r.post("", status_code=201)
    async def create_voice(name: str = Form(), transcript: str = Form(),
                           file: UploadFile = File()) -> dict[str, Any]:
        name, transcript = _checked_fields(state, name, transcript)
        clip = await decode_clip(await file.read(), "file")
        codes = await _codes(state, counters, clip.samples)
        try:
            voice = await run_in_threadpool(state.store.add_voice, owner, name, clip, transcript, codes)
        except ValueError as exc:  # e.g. the same name taken meanwhile by a concurrent upload
            raise _name_error(exc) from exc
        return voice_json(voice)

    @r.get("")
    async def list_voices() -> dict[str, Any]:
        return {"object": "list", "data": [voice_json(v) for v in state.store.list_voices(owner)]}

    @r.get("/{voice_id}")
    async def get_voice(voice_id: str) -> dict[str, Any]:
        return voice_json(_require(state, voice_id))

    @r.get("/{voice_id}/audio", response_model=None)
    async def voice_audio(voice_id: str) -> Response:
        voice = _require(state, voice_id)
        try:  # read now: a delete meanwhile is a 404, never a half-sent file
            data = await run_in_threadpool(state.store.voice_audio_path(owner, voice.id).read_bytes)
        except (KeyError, FileNotFoundError):
            raise _not_found(voice_id) from None
        disposition = f"attachment; filename*=UTF-8''{quote(voice.name)}.flac"
        return Response(data, media_type="audio/flac", headers={"Content-Disposition": disposition})

    @r.patch("/{voice_id}")
    async def rename_voice(voice_id: str, body: RenameBody) -> dict[str, Any]:
        voice = _require(state, voice_id)
        try:
            return voice_json(state.store.rename_voice(owner, voice.id, body.name))
        except KeyError:
            raise _not_found(voice_id) from None
        except ValueError as exc:
            raise _name_error(exc) from exc

    @r.delete("/{voice_id}")
    async def delete_voice(voice_id: str) -> dict[str, Any]:
        voice = _require(state, voice_id)
        if not state.store.delete_voice(owner, voice.id):
            raise _not_found(voice_id)
        return {"id": voice.id, "object": "voice.deleted", "deleted": True}

    return r

