# The loss service as a container image. Two targets:
#
#   docker build -t loss-service .                          # CPU (NumPy): the last stage, `runtime`
#   docker build --target cuda -t loss-service:cuda .       # CUDA (CuPy: the `gpu` extra)
#   docker run --rm -p 8000:8000 loss-service
#
# PYTHON_IMAGE is any image with `python3` (3.11+) and its `venv` module: the official slim image
# by default; scripts/container_check.sh passes a Debian bookworm image it builds locally.
# CUDA_IMAGE is an NVIDIA CUDA *runtime* image (no compilers); the cuda target adds the
# distribution's python3 to it.
ARG PYTHON_IMAGE=python:3.12-slim
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04

# Both builders: dependencies first, read from pyproject.toml at the versions of constraints.txt
# (`make lock`), so that a change to the code reuses that layer; then the project as a wheel;
# then pip, setuptools and wheel leave the venv, so the runtime stages carry no build tools.
# `loss-service --help` proves the entry point imports. Last, the fused CPU kernels are compiled
# into /opt/venv/kernel-cache (35-60 s on 2 cores), from / so that Python imports the installed
# package, not /src (numba keys its cache by the source's path). A container copies them into
# its writable NUMBA_CACHE_DIR at start (LOSS_SERVICE_KERNEL_CACHE_SEED) and loads them in about
# a second instead of compiling. numba takes a cached kernel only on the CPU model it was
# compiled for: on another one the container compiles at start, answering /healthz meanwhile
# and /readyz once done, so build the image on the kind of machine it runs on.

# ---- target `cuda`: the `gpu` extra on the CUDA runtime image -------------------------------
FROM ${CUDA_IMAGE} AS cuda-base
# Ubuntu's python3 moves with the CUDA image's release: pinning it would break every rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

FROM cuda-base AS cuda-builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml constraints.txt scripts/requirements_from_pyproject.py ./
RUN python3 -m venv /opt/venv \
    && python3 requirements_from_pyproject.py gpu > /tmp/requirements.txt \
    && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt -c constraints.txt
COPY README.md ./
COPY service ./service
RUN /opt/venv/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /tmp/dist . \
    && /opt/venv/bin/pip install --no-cache-dir "$(echo /tmp/dist/*.whl)[gpu]" \
    && /opt/venv/bin/python -m pip uninstall --yes pip setuptools wheel \
    && /opt/venv/bin/loss-service --help > /dev/null
WORKDIR /
RUN NUMBA_CACHE_DIR=/opt/venv/kernel-cache /opt/venv/bin/python -c \
    "from service.engine import label_noise, warm_up; assert warm_up(), 'no fused kernels'; label_noise.warm_up()"

FROM cuda-base AS cuda
RUN groupadd --gid 10001 loss \
    && useradd --uid 10001 --gid loss --no-create-home --home-dir /tmp --shell /usr/sbin/nologin loss
COPY --from=cuda-builder /opt/venv /opt/venv
# As in the CPU target below; CuPy also writes its kernel cache at import.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    LOSS_SERVICE_KERNEL_CACHE_SEED=/opt/venv/kernel-cache \
    CUPY_CACHE_DIR=/tmp/cupy-cache \
    LOSS_SERVICE_DEVICE=gpu
WORKDIR /tmp
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
CMD ["loss-service", "serve", "--host", "0.0.0.0", "--port", "8000"]

# ---- the default target: CPU -------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml constraints.txt scripts/requirements_from_pyproject.py ./
RUN python3 -m venv /opt/venv \
    && python3 requirements_from_pyproject.py > /tmp/requirements.txt \
    && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt -c constraints.txt
COPY README.md ./
COPY service ./service
RUN /opt/venv/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /tmp/dist . \
    && /opt/venv/bin/pip install --no-cache-dir /tmp/dist/*.whl \
    && /opt/venv/bin/python -m pip uninstall --yes pip setuptools wheel \
    && /opt/venv/bin/loss-service --help > /dev/null
WORKDIR /
RUN NUMBA_CACHE_DIR=/opt/venv/kernel-cache /opt/venv/bin/python -c \
    "from service.engine import label_noise, warm_up; assert warm_up(), 'no fused kernels'; label_noise.warm_up()"

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --gid 10001 loss \
    && useradd --uid 10001 --gid loss --no-create-home --home-dir /tmp --shell /usr/sbin/nologin loss
COPY --from=builder /opt/venv /opt/venv
# matplotlib (the reliability diagram) and numba (the fused kernels) want writable caches, and
# other libraries write under $HOME: /tmp is the one writable place when the root filesystem is
# read-only (deploy/k8s mounts an emptyDir there, compose a tmpfs). numba's cache starts as a
# copy of the kernels compiled at build time (see the builders).
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    LOSS_SERVICE_KERNEL_CACHE_SEED=/opt/venv/kernel-cache
WORKDIR /tmp
USER 10001:10001
EXPOSE 8000
# No curl in a slim image: the interpreter checks liveness itself. /healthz answers 2-3.5 s after
# the start on 2 CPUs (scripts/container_check.sh measures it), whether the kernels are loaded
# yet or not: a start period of 10 s, and a check every 10 s (the first one comes after one
# interval, so the container is healthy within about 10 s, not 30).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
CMD ["loss-service", "serve", "--host", "0.0.0.0", "--port", "8000"]
