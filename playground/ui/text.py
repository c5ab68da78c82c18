"""The text panel: tag palette, text box, tag linter, chunk preview and examples.

Palette buttons insert at the caret in the browser (no server round trip): the palette's own script
edits the textarea and dispatches an `input` event, which is how Gradio's textbox learns of the change.
"""
from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from engine import MAX_CHUNK_LENGTH, MAX_TEXT_CHARS, MIN_CHUNK_LENGTH, check_text, dialogue_text, split_text
from playground.tags import PALETTE, SPEAKER_TAG, find_tags, lint

EXAMPLES_FILE = Path(__file__).resolve().parents[2] / "assets" / "examples.json"
PREVIEW_CHARS = 140  # of each chunk in the preview
MAX_LINT_SHOWN = 20  # problems listed; a text can have thousands (a run of "]"), and the first ones lead

# Bracket tags get a space on each side where the text has none; speaker tags start a new line.
PALETTE_JS = """
const box = () => document.querySelector('#s2-text textarea');
element.addEventListener('mousedown', (e) => {
  if (e.target.closest('button[data-insert]')) e.preventDefault();  // keep the caret in the textarea
});
element.addEventListener('click', (e) => {
  const button = e.target.closest('button[data-insert]');
  const ta = box();
  if (!button || !ta) return;
  const tag = button.dataset.insert, value = ta.value;
  const at = ta.selectionStart ?? value.length;
  const before = value.slice(0, at), after = value.slice(at);
  let text = tag;
  if (tag.startsWith('<|')) {
    if (before && !before.endsWith('\\n')) text = '\\n' + text;
  } else {
    if (before && !/\\s$/.test(before)) text = ' ' + text;
    if (!/^\\s/.test(after)) text += ' ';
  }
  ta.value = before + text + after;
  ta.focus();
  ta.setSelectionRange(at + text.length, at + text.length);
  ta.dispatchEvent(new Event('input', { bubbles: true }));
});
"""


@dataclass
class TextPanel:
    box: gr.Textbox
    lint: gr.HTML
    preview: gr.HTML


def palette_html() -> str:
    groups = []
    for group in PALETTE:
        buttons = "".join(f'<button type="button" class="s2-tag" data-insert="{html.escape(t.insert)}" '
                          f'title="{html.escape(t.hint)}">{html.escape(t.insert)}</button>' for t in group.tags)
        groups.append(f'<div class="s2-tag-group"><span class="s2-tag-group-name">{html.escape(group.name)}'
                      f'</span><div class="s2-tag-buttons">{buttons}</div></div>')
    return f'<div class="s2-palette">{"".join(groups)}</div>'


def load_examples() -> list[dict]:
    return json.loads(EXAMPLES_FILE.read_text(encoding="utf-8"))


def build_text_panel() -> TextPanel:
    gr.HTML(palette_html(), js_on_load=PALETTE_JS, elem_id="s2-palette")
    box = gr.Textbox(label="Text", lines=7, max_lines=20, max_length=MAX_TEXT_CHARS, elem_id="s2-text",
                     placeholder="Type what to say. Tags like [whisper] or [laughing] steer the delivery; "
                                 "<|speaker:1|> switches speakers.")
    lint_box = gr.HTML(lint_html(""), elem_id="s2-lint")
    examples = load_examples()
    gr.Examples([[e["text"]] for e in examples], inputs=[box], label="Examples",
                example_labels=[e["title"] for e in examples], examples_per_page=len(examples))
    preview = gr.HTML(preview_html("", 0), elem_id="s2-preview")
    return TextPanel(box, lint_box, preview)


def lint_html(text: str) -> str:
    # Gradio does not enforce the textbox's max_length on the server, so the handler refuses long text.
    refusal = _refusal(text)
    if refusal:
        return f'<div class="s2-lint s2-lint-warn" data-count="1"><ul><li>Not checked: {refusal}</li></ul></div>'
    if not text.strip():
        return '<div class="s2-lint s2-lint-empty">Tags are plain text in [brackets]; click one above.</div>'
    problems = lint(text)
    if problems:
        items = "".join(f"<li>{html.escape(p)}</li>" for p in problems[:MAX_LINT_SHOWN])
        if len(problems) > MAX_LINT_SHOWN:
            items += f"<li>… and {len(problems) - MAX_LINT_SHOWN} more</li>"
        return f'<div class="s2-lint s2-lint-warn" data-count="{len(problems)}"><ul>{items}</ul></div>'
    tags = find_tags(text)
    speakers = {t for t in tags if SPEAKER_TAG.fullmatch(t)}
    if not tags:
        return f'<div class="s2-lint s2-lint-empty" data-count="0">No tags · {len(text)} characters</div>'
    detail = f"{len(tags) - len(speakers)} tag(s)" + (f", {len(speakers)} speaker(s)" if speakers else "")
    return (f'<div class="s2-lint s2-lint-ok" data-count="0">Tags look good · {detail} · '
            f"{len(text)} characters</div>")


def preview_html(text: str, chunk_length: int) -> str:
    refusal = _refusal(text) or _chunk_length_refusal(chunk_length)
    if refusal:
        return _refused_preview(refusal)
    if not text.strip():
        return ""
    try:
        chunks = split_text(text, int(chunk_length)) if chunk_length else [dialogue_text(text).strip()]
    except ValueError as e:  # e.g. a speaker tag with an absurd number; the message does not quote the text
        return _refused_preview(html.escape(str(e)))
    if len(chunks) == 1:
        return (f'<div class="s2-preview" data-chunks="1">One chunk ({len(chunks[0])} characters): '
                "generated in one piece.</div>")
    items = "".join(f'<li><span class="s2-chunk-len">{len(c)}</span>{html.escape(_clip(c))}</li>' for c in chunks)
    return (f'<div class="s2-preview" data-chunks="{len(chunks)}"><div>Split into {len(chunks)} chunks of at most '
            f"{int(chunk_length)} characters; each can be replayed and regenerated after the take.</div>"
            f"<ol>{items}</ol></div>")


def _refusal(text: str) -> str | None:
    """Why the text cannot be synthesized (too long, not a string, a lone surrogate), as HTML; None if it can."""
    try:
        check_text(text)
    except ValueError as e:
        return html.escape(str(e))
    return None


def _refused_preview(reason: str) -> str:
    return f'<div class="s2-preview s2-preview-refused" data-chunks="0">No preview: {reason}</div>'


def _chunk_length_refusal(chunk_length: object) -> str | None:
    # The slider's range is not enforced on the server either; a request outside it would be refused.
    if isinstance(chunk_length, (int, float)) and (chunk_length == 0 or
                                                   MIN_CHUNK_LENGTH <= chunk_length <= MAX_CHUNK_LENGTH):
        return None
    return f"chunk length must be 0 (never split) or {MIN_CHUNK_LENGTH} to {MAX_CHUNK_LENGTH} characters"


def _clip(text: str) -> str:
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS - 1] + "…"


def wire_text_panel(p: TextPanel, chunk_length: gr.Slider) -> None:
    fast = {"queue": False, "show_progress": "hidden", "trigger_mode": "always_last"}
    p.box.change(lint_html, p.box, p.lint, **fast)
    p.box.change(preview_html, [p.box, chunk_length], p.preview, **fast)
    chunk_length.change(preview_html, [p.box, chunk_length], p.preview, **fast)
