#!/usr/bin/env bash
# Installs Debian's `chromium` for the browser test of the offline docs (tests/test_docs_browser.py).
#
# The test drives it with Playwright's Python package and `executable_path`; Playwright's own
# `playwright install` would download a browser build, which is not what we ship or test against.
# Does nothing when chromium is already there. Needs root (or password-less sudo) and apt.
# Exit status: 0 when /usr/bin/chromium (or $CHROMIUM) runs afterwards, non-zero otherwise.
set -euo pipefail

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

if "$CHROMIUM" --version >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser.sh: no apt-get here; install chromium with your package manager" >&2
    exit 1
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        echo "install_browser.sh: not root and no password-less sudo; run it as root" >&2
        exit 1
    fi
fi
# Another apt run (a CI step, a colleague's install) may hold the lock: wait for it.
APT=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -q)
"${APT[@]}" update
"${APT[@]}" install -y --no-install-recommends chromium
if ! "$CHROMIUM" --version; then
    echo "install_browser.sh: Debian's chromium is installed, but $CHROMIUM does not run" >&2
    exit 1
fi
