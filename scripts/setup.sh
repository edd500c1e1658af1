#!/bin/bash
# Install what treeship needs on Debian 12: system packages (only those missing), then
# a virtualenv at $VENV (default .venv) with treeship and its test tools. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

PACKAGES=(ostree gir1.2-ostree-1.0 libgirepository1.0-dev libcairo2-dev pkg-config gcc
          python3-dev python3-venv openssh-server openssh-client gnupg buildstream rsync
          zstd xz-utils git strace)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
        SUDO=sudo
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating virtualenv $VENV"
    python3 -m venv "$VENV"
fi
echo "setup: installing treeship into $VENV (PyGObject builds once, ~30 s)"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]"
"$VENV/bin/python" -c 'import gi; gi.require_version("OSTree", "1.0"); from gi.repository import OSTree' \
    || { echo "setup: libostree is not importable from $VENV" >&2; exit 1; }
"$VENV/bin/treeship" --version
