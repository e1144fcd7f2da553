#!/usr/bin/env bash
# Shared set-up for the Quickstart scripts: a virtual environment with handgrad
# installed, and real data where it can be had.
#   setup_venv [EXTRAS]   create .venv (if missing) and install handgrad[EXTRAS] into it
#   ensure_data           MNIST if found or downloadable, else Fashion-MNIST, installing
#                         Debian's dataset-fashion-mnist with apt where apt is usable
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HANDGRAD_VENV:-$ROOT/.venv}"
HG="$VENV/bin/handgrad"

setup_venv() {
  local extras="${1:-}"
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  # Re-install only when pyproject.toml changed since the last install with these extras.
  local stamp="$VENV/.handgrad-installed${extras:+-$extras}"
  if [ -f "$stamp" ] && [ "$stamp" -nt "$ROOT/pyproject.toml" ] && [ "$stamp" -nt "$ROOT/constraints.txt" ]; then
    return 0
  fi
  # constraints.txt pins the CPU build of torch that set-ups install (a loose requirement could pull
  # a multi-GB CUDA build); the library itself accepts a range (pyproject.toml)
  "$VENV/bin/python" -m pip install --quiet -c "$ROOT/constraints.txt" -e "$ROOT${extras:+[$extras]}"
  touch "$stamp"
}

apt_usable() {
  command -v apt-get >/dev/null 2>&1 || return 1
  [ "$(id -u)" = 0 ] && return 0
  command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi
}

ensure_fashion_mnist() {
  if "$HG" data fashion-mnist --no-download >/dev/null 2>&1; then
    return 0
  fi
  if apt_usable; then
    echo "installing Debian's dataset-fashion-mnist with apt-get ..."
    as_root apt-get update -qq >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  fi
  "$HG" data fashion-mnist --no-download >/dev/null
}

ensure_data() {
  if "$HG" data mnist >/dev/null 2>&1; then
    return 0
  fi
  ensure_fashion_mnist
}

ensure_graphviz() {
  # Debian's graphviz: the `dot` program that `handgrad graph` and `hg.draw` render with
  command -v dot >/dev/null 2>&1 && return 0
  if apt_usable; then
    echo "installing Debian's graphviz with apt-get ..."
    as_root apt-get update -qq >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null
  fi
  command -v dot >/dev/null 2>&1
}

ensure_words() {
  # Debian's wamerican word list: the notebooks' character-level data
  [ -f /usr/share/dict/american-english ] && return 0
  if apt_usable; then
    echo "installing Debian's wamerican with apt-get ..."
    as_root apt-get update -qq >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wamerican >/dev/null
  fi
  [ -f /usr/share/dict/american-english ]
}

ensure_fortunes() {
  # Debian's fortunes: plain-text files under /usr/share/games/fortunes, a corpus for character models
  [ -d /usr/share/games/fortunes ] && return 0
  if apt_usable; then
    echo "installing Debian's fortunes with apt-get ..."
    as_root apt-get update -qq >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fortunes >/dev/null
  fi
  [ -d /usr/share/games/fortunes ]
}
