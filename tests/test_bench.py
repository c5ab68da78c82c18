"""The benchmark CLI runs end to end on the tiny preset (numbers are meaningless on CPU)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_tiny_preset_writes_a_row_per_round(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "engine.bench", "--preset", "tiny", "--device", "cpu", "--frames", "3",
           "--concurrency", "1,2", "--hit-concurrency", "1", "--json", str(out)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert [(r["concurrency"], r["prefix_hit"]) for r in rows] == [(1, False), (2, False), (1, True)]
    for r in rows:
        assert r["aggregate_frames_per_s"] > 0 and r["ttft_p50_ms"] > 0 and r["ttfb_p50_ms"] > 0
    assert "| conc |" in res.stdout and "preset tiny" in data["header"]


def test_capacity_rounds_report_real_time_streams(tmp_path: Path) -> None:
    out = tmp_path / "capacity.json"
    cmd = [sys.executable, "-m", "engine.bench", "--preset", "tiny", "--device", "cpu", "--frames", "4",
           "--capacity", "2,5", "--max-batch", "2", "--spread", "0.2", "--json", str(out)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.read_text())
    # every client is served in full: more clients than max_batch wait for a slot, none is refused
    assert [(r["clients"], r["served"], r["refused"], r["failed"]) for r in data["rows"]] == [(2, 2, 0, 0),
                                                                                             (5, 5, 0, 0)]
    for r in data["rows"]:
        assert r["aggregate_frames_per_s"] > 0 and r["ttfb_p50_ms"] > 0 and 0 <= r["continuous"] <= 1
    assert data["largest_real_time"] in (0, 2, 5) and "| clients |" in res.stdout
