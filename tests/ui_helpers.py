"""Browser helpers for the playground tests: headless Debian Chromium with a fake microphone, and a thin
wrapper over a Playwright page that knows the playground's element ids."""
from __future__ import annotations

import io
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright

from tests.tools import tool

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
BASE_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", "--disable-quic", "--autoplay-policy=no-user-gesture-required",
             "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
MIC_TEXT = "Hello, this is my voice for the playground test."


def speech_wav(folder: Path, text: str = MIC_TEXT) -> Path:
    """A 44.1 kHz mono WAV of `text` spoken by espeak-ng (Chromium's fake microphone plays it in a loop)."""
    raw, out = folder / "speech-22k.wav", folder / "speech.wav"
    subprocess.run([tool("espeak-ng"), "-w", str(raw), text], check=True)
    subprocess.run([tool("sox"), str(raw), "-r", "44100", "-c", "1", str(out)], check=True)
    return out


def launch(pw: Playwright, fake_mic: Path) -> Browser:
    return pw.chromium.launch(executable_path=tool("chromium"),
                              args=[*BASE_ARGS, f"--use-file-for-fake-audio-capture={fake_mic}"])


class Playground:
    """One tab on the playground; collects console errors and uncaught exceptions as they happen."""

    def __init__(self, browser: Browser, url: str) -> None:
        self.url = url
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.context.grant_permissions(["microphone"])
        self.page: Page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self._error(str(e)))
        self.open()

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self._error(message.text)

    def _error(self, text: str) -> None:
        # Gradio's client aborts a request that a newer event supersedes (seen under heavy CPU load when
        # a history row is clicked while the previous load is in flight): a cancelled fetch, not a fault.
        if not text.startswith("AbortError: signal is aborted without reason"):
            self.errors.append(text)

    def open(self) -> None:
        self.page.goto(self.url)
        self.page.wait_for_selector("#s2-generate")
        # The load event fills the voice list and the history; its end clears the status pending flag.
        self.page.wait_for_selector("#s2-status .s2-status[data-running]", timeout=20_000)

    def close(self) -> None:
        self.context.close()

    # -- controls ------------------------------------------------------------------------------
    def set_text(self, text: str) -> None:
        self.page.fill("#s2-text textarea", text)

    def set_number(self, elem_id: str, value: float) -> None:
        """A slider or number box: type into its number input and commit."""
        box = self.page.locator(f"#{elem_id} input[type=number]")
        box.fill(str(value))
        box.press("Enter")
        box.blur()

    def generate(self) -> None:
        self.page.click("#s2-generate")

    # -- reading -------------------------------------------------------------------------------
    def figures_state(self) -> str | None:
        return self.page.get_attribute("#s2-figures .s2-figures", "data-state")

    def wait_figures(self, *states: str, timeout: float = 60.0) -> str:
        selector = ", ".join(f"#s2-figures .s2-figures[data-state={s}]" for s in states)
        self.page.wait_for_selector(selector, timeout=timeout * 1000)
        state = self.figures_state()
        assert state is not None  # the selector it waited for has the attribute
        return state

    def frames(self) -> int:
        frames = self.page.get_attribute("#s2-figures .s2-figures", "data-frames")
        assert frames is not None
        return int(frames)

    def player(self) -> dict:
        return self.page.evaluate("""() => { const p = window.s2Player; return {
            samplesReceived: p.samplesReceived, chunksReceived: p.chunksReceived, firstAudioAt: p.firstAudioAt,
            state: p.state,
            figures: document.querySelector('#s2-figures .s2-figures').dataset.state,
            stopEnabled: !document.querySelector('#s2-stop').disabled }; }""")

    def audio_url(self, elem_id: str = "s2-result") -> str:
        link = self.page.locator(f"#{elem_id} a[data-testid=download-link]")
        link.wait_for(timeout=30_000)
        href = link.get_attribute("href")
        assert href is not None
        return href

    def audio(self, elem_id: str = "s2-result") -> np.ndarray:
        """The clip shown in a gr.Audio, fetched through its URL and decoded."""
        resp = httpx.get(self.audio_url(elem_id), timeout=30)
        resp.raise_for_status()
        samples, rate = sf.read(io.BytesIO(resp.content), dtype="float32")
        assert rate == 44100
        return samples

    def history_rows(self) -> list[list[str]]:
        """The rendered rows of the history table (it is virtual: only rows in view exist)."""
        self.page.locator("#s2-history").scroll_into_view_if_needed()
        rows = self.page.locator("#s2-history [role=row].virtual-row")
        return [[c.strip() for c in rows.nth(i).locator("[role=gridcell]").all_text_contents()]
                for i in range(rows.count())]

    def wait_history(self, predicate, what: str) -> list[list[str]]:
        """The history rows once `predicate(rows)` holds (the virtual table renders a moment after its value)."""
        rows: list[list[str]] = []

        def ready() -> bool:
            rows[:] = self.history_rows()
            return bool(predicate(rows))
        self.wait_until(ready, what=what)
        return rows

    def click_history_row(self, short_id: str) -> None:
        self.page.locator("#s2-history [role=row].virtual-row").filter(has_text=short_id) \
            .locator("[role=gridcell]").nth(2).click()

    def wait_until(self, predicate, timeout: float = 20.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.1)

    def shot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=path, full_page=True)
        return path
