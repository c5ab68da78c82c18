"""What a fresh machine needs: every system tool a test drives is on the list setup installs, and
every command the product tells a user to run exists in the environment setup makes."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from engine.checkpoint import CheckpointError, resolve_model_path
from playground.state import DEMO_HELP
from tests.tools import TOOLS_FILE, listed_tools, tool

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
# A command a test starts by name: subprocess.run(["name", ...]) or shutil.which("name").
_BY_NAME = re.compile(r"""(?:subprocess\.\w+\(\s*\[\s*|shutil\.which\(\s*)["']([\w.+-]+)["']""")
_COMMAND = re.compile(r"`((?:hf|python|\./\w+\.sh)\b[^`]*)`")


def test_tests_reach_system_tools_only_through_the_list() -> None:
    offenders = {f"{path.name}: {name}" for path in TESTS.glob("*.py") if path.name not in ("tools.py", "test_setup.py")
                 for name in _BY_NAME.findall(path.read_text())}
    assert offenders == set()
    setup = (ROOT / "scripts" / "setup_env.sh").read_text()
    assert TOOLS_FILE.name in setup  # the list is what setup installs
    for command in listed_tools():
        assert Path(tool(command)).is_file()


def test_commands_the_product_names_exist() -> None:
    try:
        resolve_model_path(str(ROOT / "no-such-checkpoint"))
        raise AssertionError("a missing local checkpoint must raise")
    except CheckpointError as exc:
        told = str(exc)
    commands = _COMMAND.findall(DEMO_HELP) + _COMMAND.findall(told)
    hf_commands = [c for c in commands if c.startswith("hf ")]
    assert hf_commands, (DEMO_HELP, told)
    for command in hf_commands:
        words = command.split()
        exe = Path(sys.executable).parent / words[0]
        run = subprocess.run([str(exe), words[1], "--help"], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and "download" in run.stdout.lower(), run.stderr
