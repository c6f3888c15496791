# CPU serving image: the same stack as `make serve` (the real tritonserver 2.51 from the
# nvidia-pytriton wheel, `python -m model_repository.serve` with its stub supervisor), serving the
# ONNX Runtime engine, built at first start into the engine volume (docker/entrypoint.sh).
# NOT BUILT HERE: these machines have no Docker engine; hadolint checks this file (make lint-deploy).
#
#   docker build -f docker/cpu.Dockerfile -t dlm-triton-cpu .
#   docker run --rm --shm-size=1g -p 8000-8002:8000-8002 -v dlm-engine:/var/lib/dlm dlm-triton-cpu
#
# Unverified: the size of the image (requirements.txt is the whole pinned resolution, tests and
# benchmark tools included) and the torch==2.13.0 wheel pip picks for it.
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DLM_SERVER=pytriton \
    DLM_ENGINE_BACKEND=onnxruntime \
    DLM_MODEL=/opt/dlm-triton/models/default \
    DLM_ENGINE_DIR=/var/lib/dlm/engine \
    DLM_WORKDIR=/tmp/dlm
WORKDIR /opt/dlm-triton

COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt \
    && useradd --system --uid 10001 --create-home dlm \
    && mkdir -p /var/lib/dlm \
    && chown dlm /var/lib/dlm

COPY dlm ./dlm
COPY plugins ./plugins
COPY export ./export
COPY model_repository ./model_repository
COPY serving ./serving
COPY client ./client
COPY models/default ./models/default
COPY docker/entrypoint.sh ./docker/entrypoint.sh

USER 10001
VOLUME ["/var/lib/dlm"]
EXPOSE 8000 8001 8002
ENTRYPOINT ["bash", "docker/entrypoint.sh"]
CMD ["run"]
