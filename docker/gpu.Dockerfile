# GPU serving image on the NGC Triton release the project targets (24.10 = Triton 2.51): the
# image's own tritonserver (/opt/tritonserver) serves the model repository; the dlm model runs the
# TensorRT plan through TensorRT's Python wheels (see docker/engine.Dockerfile for why 10.9 over
# the image's 10.5). The engine is built at first start when the engine volume has no
# manifest.json (docker/build_engine.sh, under a lock), then the repository is filled and
# `python -m model_repository.serve` exec'd on that tritonserver (docker/entrypoint.sh,
# DLM_SERVER=tritonserver): the same stub supervision as `make serve` and the CPU image.
# NOT BUILT OR RUN HERE: these machines have no Docker engine and cannot reach NGC, and TensorRT
# is not available to this project's GPU runs (shared/ENVIRONMENT.md); hadolint checks this file.
#
#   docker build -f docker/gpu.Dockerfile -t dlm-triton-gpu .
#   docker run --rm --gpus all --shm-size=1g -p 8000-8002:8000-8002 \
#       -v dlm-engine:/var/lib/dlm dlm-triton-gpu
#
# Unverified: that torch==2.13.0 (requirements.txt) has a wheel for this image's Python (3.10),
# and the supervisor on this image's layout (the stub in backends/python/, not
# python_backend_stubs/<version>/ as in the wheel: model_repository/serve.py make_backend_dir).
ARG BASE_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3
FROM ${BASE_IMAGE}

ARG TENSORRT_VERSION=10.9.0.34
ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/tritonserver/bin:${PATH} \
    DLM_SERVER=tritonserver \
    DLM_ENGINE_BACKEND=tensorrt \
    DLM_MODEL=/opt/dlm-triton/models/default \
    DLM_ENGINE_DIR=/var/lib/dlm/engine \
    DLM_WORKDIR=/tmp/dlm
WORKDIR /opt/dlm-triton

COPY requirements.txt ./
RUN python3 -m pip install --no-cache-dir -r requirements.txt \
        "tensorrt-cu12==${TENSORRT_VERSION}" \
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
COPY docker/build_engine.sh docker/entrypoint.sh ./docker/

USER 10001
VOLUME ["/var/lib/dlm"]
EXPOSE 8000 8001 8002
ENTRYPOINT ["bash", "docker/entrypoint.sh"]
CMD ["run"]
