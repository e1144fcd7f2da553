#!/usr/bin/env bash
# Quickstart 2: set up and run the test suite (extra arguments go to pytest).
# Fashion-MNIST is installed where apt is usable, so the real-data tests run too;
# the tests themselves never touch the network.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
setup_venv test
ensure_fashion_mnist || echo "Fashion-MNIST unavailable: its real-data tests will be skipped"
ensure_words || echo "the wamerican word list unavailable: the notebook that reads it will fail"
ensure_fortunes || echo "fortunes unavailable: its real-text test will be skipped"
ensure_graphviz || echo "graphviz's dot unavailable: the tests that render graphs will be skipped"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest "$@"
