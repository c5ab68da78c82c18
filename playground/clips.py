"""Reference clips from visitors: one rule for the API and the playground (1 to 30 s, not silent).

Decoding is bounded by engine.audio (limits checked from the container first, decoding stopped at
the limit, few decodes at once); this adds the product's own rule on top.
"""
from __future__ import annotations

from pathlib import Path

from engine import MAX_REFERENCE_SECONDS, MIN_REFERENCE_SECONDS, AudioError, DecodedClip, is_silent, load_clip


def read_clip(source: bytes | str | Path) -> DecodedClip:
    """The clip, or AudioError saying what is wrong with it. Blocking: run it in a worker thread."""
    clip = load_clip(source, min_seconds=MIN_REFERENCE_SECONDS, max_seconds=MAX_REFERENCE_SECONDS)
    if is_silent(clip.samples):
        raise AudioError("The clip is silent (below -60 dBFS): record again closer to the microphone, "
                         "or check the input level.")
    return clip
