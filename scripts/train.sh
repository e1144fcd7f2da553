#!/usr/bin/env bash
# Quickstart 1: set up, find real data, and train the seeds' 784-50-10 MLP with
# hand-written gradients (extra arguments go to `handgrad train`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
setup_venv
ensure_data
exec "$HG" train "$@"
