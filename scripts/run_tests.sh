#!/usr/bin/env bash
# The test command: lint, then the whole suite against real servers the tests start themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check .
exec python3 -m pytest -q -p no:cacheprovider "$@"
