"""The system tools the tests drive, reached only through `tool()`: a command missing from
scripts/test-tools.txt (the list `scripts/setup_env.sh --test` installs) fails the test that asks for
it, so a fresh machine never meets a tool nobody installs."""
from __future__ import annotations

import shutil
from pathlib import Path

TOOLS_FILE = Path(__file__).resolve().parent.parent / "scripts" / "test-tools.txt"


def listed_tools() -> dict[str, str]:
    """command -> Debian package, as listed."""
    pairs = (line.split() for line in TOOLS_FILE.read_text().splitlines() if line.strip() and not line.startswith("#"))
    return dict(pairs)


def tool(command: str) -> str:
    """The path of a listed system tool; fails (never skips) when it is unlisted or not installed."""
    tools = listed_tools()
    assert command in tools, f"{command} is not in {TOOLS_FILE.name}: add it there so setup installs it"
    path = shutil.which(command)
    assert path, f"{command} is not installed: run scripts/setup_env.sh --test (apt-get install {tools[command]})"
    return path
