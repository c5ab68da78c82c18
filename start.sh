#!/usr/bin/env bash
# Set up .venv (idempotent), then run the playground and the speech API on one server.
# Extra arguments go to app.py, e.g. ./start.sh --model-path /models/s2-pro --port 7860
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup_env.sh
exec .venv/bin/python app.py "$@"
