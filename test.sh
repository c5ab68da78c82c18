#!/usr/bin/env bash
# Set up .venv and the test tools (idempotent), lint and type-check, then run the whole test suite.
# Extra arguments go to pytest, e.g. ./test.sh tests/test_sampler.py -k top_p
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup_env.sh --test
.venv/bin/ruff check .
# pyright over the whole project (what and how: [tool.pyright] in pyproject.toml).
.venv/bin/pyright
# The suite runs tiny models and several servers on small machines: one math thread each avoids
# oversubscribing the cores (set OMP_NUM_THREADS to override).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python -m pytest "$@"
