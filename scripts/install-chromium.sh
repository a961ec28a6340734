#!/bin/sh
# Debian's Chromium for the browser tests (tests/test_browser.py). Playwright drives it with
# executable_path; its own browser download is not used (it cannot reach its host here).
set -e
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "install-chromium: run as root, or install Debian's chromium package yourself" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq chromium >/dev/null
command -v chromium >/dev/null
