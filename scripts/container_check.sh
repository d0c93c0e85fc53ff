#!/usr/bin/env bash
# Builds the image from ./Dockerfile and serves requests from it, with no Docker engine and no
# container registry: only Debian's packages and PyPI.
#
#  1. installs debootstrap, buildah, podman, runc and iproute2 (apt-get) if they are missing;
#  2. makes the base image localhost/loss-service-python-base:bookworm (debootstrap minbase with
#     python3, python3-venv, ca-certificates) unless the store or .cache/container has it already;
#  3. builds the Dockerfile's default target against it (buildah, chroot isolation, host network
#     so that pip reaches PyPI), reusing the dependency layer while pyproject.toml is unchanged;
#  4. runs the image's own command as the pod spec of deploy/k8s would (read-only root, no
#     capabilities, its non-root user) in a network namespace of its own, so port 8000 never
#     collides with anything on the host;
#  5. measures the seconds from `podman run` to the first 200 of /healthz and of /readyz, checks
#     that the kernels were loaded from the cache compiled into the image (its log), one
#     cross-entropy request (logits [[0, 0]], label 1: loss = log 2), the image's HEALTHCHECK,
#     an evaluation run in the default SQLite file (/tmp) and the PostgreSQL driver's import,
#     its user, the absence of build tools, and a clean exit on SIGTERM;
#  6. always removes the container and the namespace it made (the images stay, as a cache).
#
# Run as root, non-interactively: `make container-check` or `bash scripts/container_check.sh`.
# Settings (environment): CONTAINER_CHECK_CACHE (default .cache/container), DEBIAN_MIRROR,
# CONTAINER_CHECK_IMAGE (the tag it builds), CONTAINER_RUNTIME (default runc), STORAGE_DRIVER
# (e.g. vfs where overlay does not work; podman and buildah must agree on it), and the timeouts
# BUILD_TIMEOUT_S (default 1200) and READY_TIMEOUT_S (default 90).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE_DIR=${CONTAINER_CHECK_CACHE:-$PWD/.cache/container}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,ca-certificates
BASE_IMAGE=localhost/loss-service-python-base:$SUITE
IMAGE=${CONTAINER_CHECK_IMAGE:-localhost/loss-service:check}
RUNTIME=${CONTAINER_RUNTIME:-runc}
BUILD_TIMEOUT_S=${BUILD_TIMEOUT_S:-1200}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-90}
NAME=loss-service-check-$$
NETNS=loss-service-check-$$
STORAGE=()
if [[ -n ${STORAGE_DRIVER:-} ]]; then STORAGE=(--storage-driver "$STORAGE_DRIVER"); fi

start=$SECONDS
step() { printf '[container-check %4ss] %s\n' $((SECONDS - start)) "$*"; }
fail() { printf '[container-check] FAILED: %s\n' "$*" >&2; exit 1; }

podman_() { timeout "${PODMAN_TIMEOUT_S:-120}" podman "${STORAGE[@]}" --runtime "$RUNTIME" "$@"; }

# shellcheck source=scripts/debian_image.sh
source scripts/debian_image.sh

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if podman container exists "$NAME" 2>/dev/null; then
        if [[ $rc -ne 0 ]]; then
            echo "--- container log (last 40 lines) ---" >&2
            timeout 20 podman "${STORAGE[@]}" logs --tail 40 "$NAME" >&2 || true
        fi
        timeout 60 podman "${STORAGE[@]}" --runtime "$RUNTIME" rm --force --time 5 "$NAME" \
            > /dev/null || true
    fi
    ip netns list 2>/dev/null | grep -qw "$NETNS" && ip netns delete "$NETNS" || true
    remove_rootfs
    step "done (exit $rc)"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[[ $(id -u) -eq 0 ]] || fail "run as root: debootstrap, buildah and network namespaces need it"

# ---- 1. tools, 2. the base image ---------------------------------------------------------------
install_container_tools
step "tools: $(buildah --version | cut -d' ' -f1-3), $(podman --version), runtime $RUNTIME"
debian_image "$SUITE" "$BASE_PACKAGES" "$BASE_IMAGE"

# ---- 3. the build -----------------------------------------------------------------------------
step "build $IMAGE (Dockerfile, default target, PYTHON_IMAGE=$BASE_IMAGE)"
build_log=$CACHE_DIR/build.log
mkdir -p "$CACHE_DIR"
build() {
    timeout "$BUILD_TIMEOUT_S" buildah "${STORAGE[@]}" bud --isolation chroot --network host \
        --layers --force-rm --pull=never --format docker \
        --build-arg "PYTHON_IMAGE=$BASE_IMAGE" "$@" . >> "$build_log" 2>&1 \
        || { tail -40 "$build_log" >&2; fail "the build (whole log: $build_log)"; }
}
: > "$build_log"
# The builder stage gets a tag of its own, so that the prune at the end keeps its layers (the
# dependency layer above all) as the cache of the next build; the second build reuses them.
build --target builder --tag "$IMAGE-builder"
build --tag "$IMAGE"
cached=$(grep -c '^--> Using cache' "$build_log" || true)
size=$(podman "${STORAGE[@]}" image inspect --format '{{.Size}}' "$IMAGE")
step "built $IMAGE: $((size / 1000000)) MB, $cached steps from the layer cache"

config=$(podman "${STORAGE[@]}" image inspect --format \
    '{{.Config.User}}|{{json .Config.Cmd}}|{{json .Config.Healthcheck.Test}}' "$IMAGE")
IFS='|' read -r user cmd healthcheck <<< "$config"
[[ $user == 10001:10001 ]] || fail "image user is '$user', not 10001:10001"
[[ $cmd == '["loss-service","serve","--host","0.0.0.0","--port","8000"]' ]] \
    || fail "image CMD is $cmd"
[[ $healthcheck == *healthz* ]] || fail "image HEALTHCHECK is $healthcheck"

# ---- 4. run the image's command ---------------------------------------------------------------
# --no-healthcheck: podman would schedule the HEALTHCHECK with a systemd timer, and there may be
# no systemd; step 5 runs the image's HEALTHCHECK command once itself.
ip netns add "$NETNS"
ip -n "$NETNS" link set lo up
host_ulimits
step "run $IMAGE in network namespace $NETNS (read-only root, no capabilities)"
launched=$(date +%s.%N)
podman_ run --detach --name "$NAME" --network "ns:/run/netns/$NETNS" \
    --read-only --tmpfs /tmp:rw,nosuid,nodev,size=256m --cap-drop ALL \
    --security-opt no-new-privileges --no-healthcheck "${ULIMITS[@]}" "$IMAGE" > /dev/null

# ---- 5. the checks ----------------------------------------------------------------------------
ip netns exec "$NETNS" timeout $((READY_TIMEOUT_S + 30)) python3 - "$READY_TIMEOUT_S" "$launched" \
    <<'EOF' || fail "the requests (above)"
import json, math, sys, time, urllib.error, urllib.request

BASE = "http://127.0.0.1:8000"


def call(path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(BASE + path, data=data, method="POST" if data else "GET")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


# The start as a probe sees it: seconds from `podman run` to the first 200 of each probe.
launched = float(sys.argv[2])
deadline = time.time() + float(sys.argv[1])
first = {}
while "/readyz" not in first:
    for probe in ("/healthz", "/readyz"):
        try:
            status, answer = call(probe)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            continue  # not listening yet, or /readyz's 503 while the kernels load
        first.setdefault(probe, (time.time() - launched, answer))
    if time.time() > deadline:
        sys.exit(f"/readyz did not answer 200 within {sys.argv[1]} s")
    time.sleep(0.1)
(live_s, _), (ready_s, ready) = first["/healthz"], first["/readyz"]
print(f"[container-check] from podman run: /healthz 200 after {live_s:.1f} s, /readyz 200 after "
      f"{ready_s:.1f} s: {json.dumps(ready)}")
status, answer = call("/v1/losses/cross-entropy", {"logits": [[0.0, 0.0]], "labels": [1]})
assert status == 200, f"cross-entropy answered {status}: {answer}"
assert abs(answer["loss"] - math.log(2)) < 1e-12, f"cross-entropy: {answer}"
print(f"[container-check] cross-entropy of [[0, 0]], label 1: {answer['loss']!r} (log 2)")
EOF
# The kernels came from the image, compiled at build time: loaded, not compiled, at start.
loaded=$(podman "${STORAGE[@]}" logs "$NAME" 2>&1 | grep -o "fused CPU kernels [a-z' ]* in [0-9.]* s") \
    || fail "the kernels were not loaded from the image's numba cache (container log above)"
[[ $loaded == *"loaded from numba's cache"* ]] \
    || fail "the container compiled its kernels at start: $loaded"
step "$loaded"
mapfile -t probe < <(python3 -c 'import json, sys
test = json.loads(sys.argv[1])
assert test[0] == "CMD", test
print("\n".join(test[1:]))' "$healthcheck")
podman_ exec "$NAME" "${probe[@]}" || fail "the image's HEALTHCHECK: ${probe[*]}"
step "HEALTHCHECK passes"

# Evaluation runs, as the image runs without LOSS_SERVICE_DATABASE_URL: the default SQLite file
# lands in the working directory (/tmp, the one writable place). And the PostgreSQL driver that
# deploy/ points the replicas at loads, with the libpq its wheel bundles.
ip netns exec "$NETNS" timeout 60 python3 - <<'EOF' || fail "evaluation runs (above)"
import json, math, urllib.request

BASE = "http://127.0.0.1:8000"


def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(BASE + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


status, run = call("POST", "/v1/runs", {"losses": [{"name": "cross-entropy"}]})
assert status == 201, (status, run)
for batch_id, label in (("a", 1), ("b", 0)):
    batch = {"logits": [[0.0, 0.0]], "labels": [label]}
    status, receipt = call("PUT", f"/v1/runs/{run['id']}/batches/{batch_id}", batch)
    assert status == 201, (status, receipt)
status, report = call("GET", f"/v1/runs/{run['id']}")
loss = report["losses"][0]["loss"]
assert status == 200 and report["n_batches"] == 2 and abs(loss - math.log(2)) < 1e-12, report
print(f"[container-check] a run of two batches of [[0, 0]]: cross-entropy {loss!r} (log 2)")
EOF
podman_ exec "$NAME" test -s /tmp/loss-service.db || fail "no SQLite file /tmp/loss-service.db"
podman_ exec "$NAME" python3 -c 'import psycopg
print(f"[container-check] psycopg {psycopg.__version__}, libpq {psycopg.pq.version()}")' \
    || fail "the PostgreSQL driver (psycopg) does not load in the image"
step "evaluation runs: the default SQLite file in /tmp; psycopg and its libpq load"
uid=$(podman_ exec "$NAME" id -u)
[[ $uid == 10001 ]] || fail "the server runs as uid $uid"
podman_ exec "$NAME" sh -c '! test -e /opt/venv/bin/pip || exit 1
    for tool in gcc cc c++ make; do if command -v "$tool"; then exit 1; fi; done' \
    || fail "build tools in the runtime image (above)"
step "runs as uid $uid; no pip in the venv, no compiler or make in the image"
stop_start=$SECONDS
podman_ stop --time 20 "$NAME" > /dev/null
exit_code=$(podman "${STORAGE[@]}" inspect --format '{{.State.ExitCode}}' "$NAME")
[[ $exit_code == 0 ]] || fail "the server exited with $exit_code on SIGTERM"
step "SIGTERM: clean exit in $((SECONDS - stop_start)) s"

# Untagged images left by earlier builds of $IMAGE (each one a copy of the venv) go; the layer
# cache of the current build stays, since it is the parent chain of the tagged images.
podman "${STORAGE[@]}" image prune --force > /dev/null || true
step "container check passed"
