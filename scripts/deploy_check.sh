#!/usr/bin/env bash
# Lints and validates what deploys the service, offline:
#
#  - Dockerfile: hadolint;
#  - deploy/ YAML: yamllint --strict (deploy/.yamllint.yaml);
#  - deploy/docker-compose.yml: the Compose Specification's JSON schema (check-jsonschema), and
#    every build target it names is a stage of the Dockerfile;
#  - the runs' database and load balancer in compose: every replica's LOSS_SERVICE_DATABASE_URL
#    (its defaults interpolated) names the PostgreSQL service, its user and database, and waits
#    for its healthcheck; deploy/haproxy.cfg passes `haproxy -c` and repeats the replicas' body
#    limit and timeouts;
#  - deploy/k8s/base and every deploy/k8s/overlays/*: rendered by `kubectl kustomize`, then
#    `kubernetes-validate --strict` (unknown fields are errors) for each Kubernetes version in
#    K8S_VERSIONS (default: 1.30.0, the oldest checked, and 1.37.0); so is the example Secret
#    deploy/k8s/database-secret.example.yaml, whose name and key the Deployment reads
#    LOSS_SERVICE_DATABASE_URL from.
#
# The tools are the `ci` extra of pyproject.toml, installed into .venv (created if missing),
# and Debian's haproxy (apt-get, as root, where it is missing).
# Run: `make deploy-check` or `bash scripts/deploy_check.sh`. Rendered manifests are left in
# .cache/deploy/ for reading.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSIONS=${K8S_VERSIONS:-1.30.0 1.37.0}
OUT=.cache/deploy
start=$SECONDS
step() { printf '[deploy-check %3ss] %s\n' $((SECONDS - start)) "$*"; }

if [[ ! -x .venv/bin/python ]]; then
    step "create .venv"
    python3 -m venv .venv
fi
mapfile -t tools < <(python3 scripts/requirements_from_pyproject.py --only ci)
step "tools: ${tools[*]}"
timeout 600 .venv/bin/pip install --quiet --disable-pip-version-check -c constraints.txt \
    "${tools[@]}"
BIN=$PWD/.venv/bin
if ! command -v haproxy > /dev/null; then
    step "apt-get install haproxy"
    timeout 300 apt-get update -q > /dev/null
    DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -q --no-install-recommends \
        haproxy > /dev/null
fi

step "hadolint $("$BIN/hadolint" --version | awk '{print $NF}'): Dockerfile"
"$BIN/hadolint" --failure-threshold info Dockerfile

step "yamllint: deploy/"
"$BIN/yamllint" -c deploy/.yamllint.yaml --strict deploy/

step "compose: deploy/docker-compose.yml"
"$BIN/check-jsonschema" --builtin-schema vendor.compose-spec deploy/docker-compose.yml
"$BIN/python" - <<'EOF'
import re
from pathlib import Path

import yaml

stages = set(re.findall(r"(?im)^FROM\s+\S+\s+AS\s+(\S+)", Path("Dockerfile").read_text()))
compose = yaml.safe_load(Path("deploy/docker-compose.yml").read_text())
for name, service in compose["services"].items():
    if "build" not in service:  # an image as published: the database, the load balancer
        continue
    target = (service.get("build") or {}).get("target")
    assert target in stages, f"compose service {name}: target {target!r} not in {sorted(stages)}"
    print(f"  {name}: Dockerfile target {target}")
EOF

step "compose: the runs' database and the load balancer"
"$BIN/python" - <<'EOF'
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml


def defaults(value):
    """`value` as Compose interpolates it in an empty environment: `${NAME:-default}`."""
    return re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", str(value))


def seconds(value):
    match = re.fullmatch(r"(\d+)s?", value)
    assert match, f"not a duration in seconds: {value!r}"
    return int(match[1])


compose = yaml.safe_load(Path("deploy/docker-compose.yml").read_text())
services = compose["services"]
for name, service in services.items():
    if "build" not in service:
        continue
    env = {key: defaults(value) for key, value in service["environment"].items()}
    url = urlsplit(env["LOSS_SERVICE_DATABASE_URL"])
    assert url.scheme in ("postgresql", "postgresql+psycopg"), f"{name}: {url.scheme}"
    database = services.get(url.hostname)
    assert database is not None, f"{name}: the database URL names no service {url.hostname!r}"
    assert database["healthcheck"]["test"], f"{url.hostname}: no healthcheck"
    assert service["depends_on"][url.hostname]["condition"] == "service_healthy", name
    db_env = {key: defaults(value) for key, value in database["environment"].items()}
    assert unquote(url.username) == db_env["POSTGRES_USER"], f"{name}: user"
    assert unquote(url.password) == db_env["POSTGRES_PASSWORD"], f"{name}: password"
    assert url.path == "/" + db_env["POSTGRES_DB"], f"{name}: database"
    named = compose.get("volumes") or {}
    assert any(v.split(":")[0] in named for v in database["volumes"]), "no named volume"
    print(f"  {name}: LOSS_SERVICE_DATABASE_URL -> service {url.hostname}, once healthy")

# The load balancer repeats the replicas' limits: the body limit, and timeouts past the longest
# a request can take there (waiting for a compute slot, then computing).
config = Path("deploy/haproxy.cfg").read_text()
env = {key: defaults(value) for key, value in services["loss-service"]["environment"].items()}
limits = set(re.findall(r"req\.hdr_val\(content-length\) gt (\d+)", config))
assert limits == {env["LOSS_SERVICE_MAX_BODY_BYTES"]}, f"haproxy's body limit: {limits}"
longest = float(env["LOSS_SERVICE_QUEUE_TIMEOUT_S"]) + float(env["LOSS_SERVICE_REQUEST_TIMEOUT_S"])
for side in ("client", "server"):
    (value,) = re.findall(rf"^\s*timeout {side} (\S+)", config, re.MULTILINE)
    assert seconds(value) > longest, f"haproxy's timeout {side} {value} <= {longest:g} s"
assert re.search(r"^\s*balance roundrobin$", config, re.MULTILINE), "not round-robin"
assert re.search(r"\sloss-service:8000$", config, re.MULTILINE), "no server loss-service:8000"
(balancer,) = [s for s in services.values() if "haproxy.cfg" in str(s.get("volumes"))]
print(
    f"  haproxy.cfg: round-robin over loss-service:8000 on {balancer['ports']}, body limit "
    f"{limits.pop()} bytes, client and server timeouts over {longest:g} s"
)
EOF
step "haproxy $(haproxy -v | head -1 | cut -d' ' -f3): deploy/haproxy.cfg"
haproxy -c -f deploy/haproxy.cfg

rm -rf "$OUT"
mkdir -p "$OUT"
for dir in deploy/k8s/base deploy/k8s/overlays/*/; do
    dir=${dir%/}
    name=${dir#deploy/k8s/}
    rendered=$OUT/${name//\//-}.yaml
    "$BIN/kubectl" kustomize "$dir" > "$rendered"
    kinds=$(grep -E '^kind: ' "$rendered" | cut -d' ' -f2 | sort | paste -sd, -)
    step "kustomize $dir -> $rendered ($kinds)"
    for version in $K8S_VERSIONS; do
        "$BIN/kubernetes-validate" --strict --quiet -k "$version" "$rendered"
        echo "  kubernetes-validate --strict, Kubernetes $version: ok"
    done
done
secret=deploy/k8s/database-secret.example.yaml
step "$secret"
for version in $K8S_VERSIONS; do
    "$BIN/kubernetes-validate" --strict --quiet -k "$version" "$secret"
    echo "  kubernetes-validate --strict, Kubernetes $version: ok"
done

# What the manifests promise, checked on the rendered output rather than trusted.
"$BIN/python" - "$OUT" <<'EOF'
import sys
from pathlib import Path

import yaml

for path in sorted(Path(sys.argv[1]).glob("*.yaml")):
    docs = {d["kind"]: d for d in yaml.safe_load_all(path.read_text()) if d}
    missing = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} - set(docs)
    assert not missing, f"{path}: no {missing}"
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", path
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", path
    assert pod["securityContext"]["runAsNonRoot"] is True, path
    assert container["securityContext"]["readOnlyRootFilesystem"] is True, path
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), path
    assert container["lifecycle"]["preStop"], path
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]), path
    assert {"cpu", "memory"} <= set(container["resources"]["limits"]), path
    assert docs["HorizontalPodAutoscaler"]["apiVersion"] == "autoscaling/v2", path
    env = {e["name"]: e.get("value") for e in container["env"]}
    if "gpu" in path.name:
        assert container["resources"]["limits"].get("nvidia.com/gpu") == 1, path
        assert env["LOSS_SERVICE_DEVICE"] == "gpu", path
        assert container["image"].endswith(":cuda"), path
    print(f"  {path.name}: probes, security context, /tmp, preStop, resources, HPA v2: ok")
EOF

# Evaluation runs: every replica reads the database URL from the Secret the example describes
# (required: a replica on a SQLite file of its own would split the runs), and the base runs at
# least two replicas.
"$BIN/python" - "$OUT" "$secret" <<'EOF'
import sys
from pathlib import Path

import yaml

secret = yaml.safe_load(Path(sys.argv[2]).read_text())
for path in sorted(Path(sys.argv[1]).glob("*.yaml")):
    docs = {d["kind"]: d for d in yaml.safe_load_all(path.read_text()) if d}
    assert "Secret" not in docs, f"{path}: a Secret here would overwrite the real one on apply"
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    ref = env["LOSS_SERVICE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"], f"{path}: Secret {ref['name']}"
    assert ref["key"] in secret["stringData"], f"{path}: key {ref['key']}"
    assert not ref.get("optional"), f"{path}: the database Secret must be required"
    replicas = docs["HorizontalPodAutoscaler"]["spec"]["minReplicas"]
    if path.name == "base.yaml":
        assert replicas >= 2, f"{path}: minReplicas {replicas}"
    print(
        f"  {path.name}: LOSS_SERVICE_DATABASE_URL from Secret {ref['name']} key {ref['key']}, "
        f"minReplicas {replicas}: ok"
    )
EOF
step "deploy check passed"
