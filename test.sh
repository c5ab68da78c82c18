#!/usr/bin/env bash
# Set up .venv and the test tools (idempotent), then run the whole test suite.
# Extra arguments go to pytest, e.g. ./test.sh tests/test_sampler.py -k top_p
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup_env.sh --test
exec .venv/bin/python -m pytest "$@"
