#!/usr/bin/env bash
# Check the stored candles: coverage, continuity (holes as ranges), values, resume points, lag.
# A thin wrapper around `qryptify verify` (kept under the original script's name); every
# argument is passed through, e.g. ./verify_ingestion.sh --config config.yaml --json
# Exit status: 0 all checks pass, 1 something is wrong, 2 bad arguments or unreachable database.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -x "$here/.venv/bin/qryptify" ]]; then
    exec "$here/.venv/bin/qryptify" verify "$@"
elif command -v qryptify >/dev/null 2>&1; then
    exec qryptify verify "$@"
else
    echo "verify_ingestion.sh: qryptify is not installed (run \`make install\`)" >&2
    exit 2
fi
