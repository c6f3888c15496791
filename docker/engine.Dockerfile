# The TensorRT engine builder: `python -m export --backend tensorrt`, then validation
# (docker/build_engine.sh). NOT BUILT OR RUN HERE: these machines have no Docker engine, cannot
# reach NGC, and neither they nor the lent GPU machine have TensorRT (shared/ENVIRONMENT.md).
#
#   docker build -f docker/engine.Dockerfile -t dlm-triton-engine .
#   docker run --rm --gpus all -v "$PWD/models:/opt/dlm-triton/models:ro" \
#       -v "$PWD/build:/opt/dlm-triton/build" dlm-triton-engine models/default build/engine
#
# Base: the Triton release the deployment serves with (24.10 = Triton 2.51, the same server the
# CPU path runs from PyPI). Its bundled TensorRT is 10.5, which has no ahead-of-time Python
# plugins (tensorrt.plugin.aot_impl needs >= 10.9), so TensorRT's Python wheels of
# TENSORRT_VERSION (export/tensorrt_engine.py TENSORRT_PIN) are installed on top. The denoiser runs
# the plan through those wheels (TrtEngine in a Python-backend model), never through Triton's
# TensorRT backend, so the plan is built and run by the same TensorRT.
# Unverified: that torch==2.13.0 (requirements.txt) has a wheel for this image's Python.
ARG BASE_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3
FROM ${BASE_IMAGE}

ARG TENSORRT_VERSION=10.9.0.34
ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1
WORKDIR /opt/dlm-triton

COPY requirements.txt ./
RUN python3 -m pip install -r requirements.txt "tensorrt-cu12==${TENSORRT_VERSION}"

COPY dlm ./dlm
COPY plugins ./plugins
COPY export ./export
COPY docker/build_engine.sh ./docker/build_engine.sh

ENTRYPOINT ["bash", "docker/build_engine.sh"]
CMD ["models/default", "build/engine"]
