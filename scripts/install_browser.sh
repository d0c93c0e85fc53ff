#!/usr/bin/env bash
# Installs what the browser test of the offline docs (tests/api/test_docs_browser.py) needs from
# Debian: `chromium`, and `libatomic1`, which the Node.js inside Playwright's Python package (its
# driver) links against and which a minimal Debian does not have.
#
# The test drives chromium with Playwright's Python package and `executable_path`; Playwright's own
# `playwright install` would download a browser build, which is not what we ship or test against.
# Does nothing when both are there. Needs root (or password-less sudo) and apt-get; never reads
# stdin. Exit status: 0 when /usr/bin/chromium (or $CHROMIUM) runs afterwards and libatomic.so.1
# is installed, non-zero otherwise.
set -euo pipefail

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

has_libatomic() { /sbin/ldconfig -p 2>/dev/null | grep -q 'libatomic\.so\.1 '; }

missing=()
"$CHROMIUM" --version > /dev/null 2>&1 || missing+=(chromium)
has_libatomic || missing+=(libatomic1)
if ((${#missing[@]} == 0)); then
    exit 0
fi
if ! command -v apt-get > /dev/null 2>&1; then
    echo "install_browser.sh: no apt-get here; install ${missing[*]} with your package manager" >&2
    exit 1
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo > /dev/null 2>&1 && sudo -n true 2> /dev/null; then
        SUDO=(sudo -n)
    else
        echo "install_browser.sh: not root and no password-less sudo; run it as root" >&2
        exit 1
    fi
fi
# Another apt run (a CI step, a colleague's install) may hold the lock: wait for it. The package
# lists are refreshed first: a fresh system or image has none.
APT=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -q)
"${APT[@]}" update < /dev/null
"${APT[@]}" install -y --no-install-recommends "${missing[@]}" < /dev/null
if ! "$CHROMIUM" --version; then
    echo "install_browser.sh: Debian's chromium is installed, but $CHROMIUM does not run" >&2
    exit 1
fi
if ! has_libatomic; then
    echo "install_browser.sh: libatomic1 is installed, but libatomic.so.1 is not found" >&2
    exit 1
fi
