# syntax=docker/dockerfile:1
# One image for every role: the API (`rampctl serve`), the migrations Job (`rampctl db upgrade`),
# and the Ray head / workers (`ray start ...`, KubeRay or docker-compose sets the command). Ray job
# drivers run `python -m workers.jobs.driver` inside the Ray containers, so the code must be
# identical everywhere -- hence one image.
#
#   docker build -t ramp-orchestrator .                                  # CPU torch (default)
#   docker build --build-arg TORCH_VARIANT=cu124 -t ramp-orchestrator:cu124 .   # CUDA 12.4 torch
#
# Run alone (embedded mode: SQLite + a Ray head inside the container):
#   docker run --rm -p 8000:8000 -p 8265:8265 --shm-size=2g ramp-orchestrator

ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

# TORCH_VARIANT selects the wheel index: "cpu" or a CUDA tag ("cu121", "cu124", ...). The pins follow
# scripts/setup.sh, the versions the test suite runs against.
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
# Must match the RayCluster's rayVersion (helm values ray.version): KubeRay and the Jobs API client
# expect the same Ray on every node.
ARG RAY_VERSION=2.60.0

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    RAMP_STORAGE_DIR=/data/artifacts \
    RAMP_DATA_ROOT=/data/datasets

# wget: KubeRay's default readiness/liveness probes on Ray pods run `wget ... | grep success`.
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/*

# torch first, from its own index, so the project's `torch>=...` requirement is already satisfied
# and pip never pulls the multi-GB default CUDA build from PyPI for a CPU image.
RUN pip install --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
    && pip install "ray[default,train,tune]==${RAY_VERSION}"

WORKDIR /app

# Dependencies in their own layer: install the project's requirements against empty packages, so a
# code change does not reinstall them. README.md* : the glob tolerates a checkout without it.
COPY pyproject.toml README.md* ./
RUN mkdir -p service workers rampctl \
    && touch service/__init__.py workers/__init__.py rampctl/__init__.py \
    && pip install -e .

# The code. The install is editable on purpose: service/db/migrate.py finds the Alembic scripts at
# <repo>/migrations (a sibling of the packages, not a package itself), which a wheel would not ship.
COPY . .
RUN pip install --no-deps -e . \
    && python -c "import service.db.migrate as m; assert m.MIGRATIONS_DIR.is_dir(), m.MIGRATIONS_DIR"

# Unprivileged user; /data is where the shared volume (artifacts, datasets) is mounted. Created
# here with the right owner so a fresh named volume inherits it.
RUN useradd --create-home --uid 1000 --shell /bin/bash ramp \
    && mkdir -p /data/artifacts /data/datasets \
    && chown -R ramp:ramp /data
USER ramp

# 8000 API, 8265 Ray dashboard + Jobs API, 6379 Ray GCS, 10001 Ray client.
EXPOSE 8000 8265 6379 10001

CMD ["rampctl", "serve", "--host", "0.0.0.0", "--port", "8000"]
