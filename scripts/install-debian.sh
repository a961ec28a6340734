#!/bin/sh
# Debian packages kvcap uses outside Python, installed only where their command is missing:
#   espeak-ng  the Korean voice of `kvcap describe` (audio description)
#   chromium   the web app's browser tests (tests/test_browser.py; Playwright drives it with
#              executable_path, its own browser download cannot reach its host here)
# usage: sh scripts/install-debian.sh espeak-ng [chromium]
set -e
missing=""
for pkg in "$@"; do
    command -v "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "install-debian: run as root, or install Debian's$missing yourself" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq $missing >/dev/null
for pkg in $missing; do
    command -v "$pkg" >/dev/null
done
