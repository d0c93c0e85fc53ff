#!/usr/bin/env bash
# The README's test command as a new user meets it: `make test` in a fresh clone, on a bare
# Debian stable (trixie) with nothing but python3 (venv, pip), make, git and curl.
#
#  1. installs debootstrap, podman and runc (apt-get) if they are missing;
#  2. makes the image localhost/loss-service-fresh-clone:trixie (debootstrap minbase with
#     python3, python3-venv, python3-pip, make, git, curl, ca-certificates) unless podman's store
#     or .cache/container has it already (scripts/debian_image.sh, as `make container-check`);
#  3. bundles the committed HEAD (`git bundle`: what is not committed is not in it), clones it
#     inside a container of that image and runs `make test` there, as root, on the host's
#     network so that pip reaches PyPI and apt-get Debian's mirror (the browser test installs
#     chromium);
#  4. prints pytest's skip reasons and summary line, and exits with `make test`'s status. The
#     whole log is .cache/container/fresh-clone.log.
#
# Run as root, non-interactively: `make fresh-check` or `bash scripts/fresh_clone_check.sh`.
# About 15 minutes on a 2-core machine (the suite itself, the dependencies, chromium).
# Settings (environment): as scripts/container_check.sh's CONTAINER_CHECK_CACHE, DEBIAN_MIRROR,
# CONTAINER_RUNTIME, STORAGE_DRIVER; FRESH_CHECK_SUITE (default trixie), FRESH_CHECK_TARGET
# (default test: the make target run in the clone), TEST_TIMEOUT_S (default 3600).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE_DIR=${CONTAINER_CHECK_CACHE:-$PWD/.cache/container}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=${FRESH_CHECK_SUITE:-trixie}
PACKAGES=python3,python3-venv,python3-pip,make,git,curl,ca-certificates
IMAGE=localhost/loss-service-fresh-clone:$SUITE
TARGET=${FRESH_CHECK_TARGET:-test}
RUNTIME=${CONTAINER_RUNTIME:-runc}
TEST_TIMEOUT_S=${TEST_TIMEOUT_S:-3600}
NAME=loss-service-fresh-clone-$$
STORAGE=()
if [[ -n ${STORAGE_DRIVER:-} ]]; then STORAGE=(--storage-driver "$STORAGE_DRIVER"); fi

start=$SECONDS
step() { printf '[fresh-check %4ss] %s\n' $((SECONDS - start)) "$*"; }
fail() { printf '[fresh-check] FAILED: %s\n' "$*" >&2; exit 1; }

# shellcheck source=scripts/debian_image.sh
source scripts/debian_image.sh

work=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if podman "${STORAGE[@]}" container exists "$NAME" 2>/dev/null; then
        timeout 60 podman "${STORAGE[@]}" --runtime "$RUNTIME" rm --force --time 5 "$NAME" \
            > /dev/null || true
    fi
    remove_rootfs
    [[ -z $work ]] || rm -rf "$work"
    step "done (exit $rc)"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[[ $(id -u) -eq 0 ]] || fail "run as root: debootstrap and podman need it"

install_container_tools
debian_image "$SUITE" "$PACKAGES" "$IMAGE"

work=$(mktemp -d)
head=$(git rev-parse HEAD)
git bundle create --quiet "$work/repo.bundle" HEAD
step "clone $head (the committed HEAD) in $IMAGE and run make $TARGET"
log=$CACHE_DIR/fresh-clone.log
status=0
# --tty off, stdin closed: nothing may wait for an answer. Python's own output is unbuffered so
# that the log shows where a slow step is.
host_ulimits
timeout "$TEST_TIMEOUT_S" podman "${STORAGE[@]}" --runtime "$RUNTIME" run --rm --name "$NAME" \
    --network host --volume "$work:/bundle:ro" --env PYTHONUNBUFFERED=1 "${ULIMITS[@]}" "$IMAGE" \
    bash -euc "git clone --quiet /bundle/repo.bundle /root/loss-service
        cd /root/loss-service && git checkout --quiet --detach $head
        python3 --version && make --version | head -1 && git --version
        make $TARGET" < /dev/null > "$log" 2>&1 || status=$?

grep -E '^(SKIPPED|FAILED|ERROR) ' "$log" || true
summary=$(grep -E '^=* ?[0-9]+ (passed|failed|error)|^=+ .*(passed|failed|error).* =+$' "$log" \
    | tail -1 || true)
if [[ $status -ne 0 ]]; then
    tail -40 "$log" >&2
    fail "make $TARGET exited with $status (whole log: $log)${summary:+; pytest: $summary}"
fi
step "make $TARGET passed in a fresh clone on Debian $SUITE: ${summary:-no pytest summary}"
