#!/usr/bin/env bash
# Entrypoint of the serving images (docker/cpu.Dockerfile, docker/gpu.Dockerfile).
# NOT RUN IN A CONTAINER HERE: these machines have no Docker engine (tests/deploy runs this script
# directly, outside any image: the prepare step for real, the server commands as a dry run).
#
#   entrypoint.sh [run|prepare|serve|COMMAND...] [server flags]
#     run      prepare, then serve (the default)
#     prepare  build the engine into $DLM_ENGINE_DIR unless it has manifest.json (under a lock,
#              so replicas sharing one volume build it once), then fill the model repository
#              into $DLM_WORKDIR/model_repository (the Helm chart runs this as an init container)
#     serve    exec `python -m model_repository.serve` on that repository (extra arguments go
#              to it: --log-verbose N, or tritonserver flags after --)
#     other    exec it as given (a shell, python -m client, ...)
#
# Environment (defaults set by each Dockerfile):
#   DLM_SERVER          which tritonserver `python -m model_repository.serve` runs, with the
#                       stub supervisor either way: pytriton, the nvidia-pytriton wheel's (the
#                       CPU image); tritonserver, the NGC image's /opt/tritonserver (the GPU
#                       image; DLM_TRITON_HOME overrides the folder)
#   DLM_ENGINE_BACKEND  onnxruntime | tensorrt | torch (what `prepare` builds)
#   DLM_MODEL           checkpoint folder          DLM_ENGINE_DIR  engine folder (a volume)
#   DLM_WORKDIR         writable folder for the filled repository and the backend folder
#   DLM_FILL_ARGS       more `python -m model_repository.fill` flags (e.g. --kv-budget-tokens 8192)
#   DLM_ADDRESS, DLM_HTTP_PORT, DLM_GRPC_PORT, DLM_METRICS_PORT   where the server listens
#   DLM_ADMIN_KEY       key of the restricted model-repository API (load/unload/index); unset: a
#                       random key per start, i.e. the API is closed to everyone
#   DLM_DRY_RUN=1       print the commands instead of running them
set -euo pipefail
cd "$(dirname "$0")/.."

SERVER=${DLM_SERVER:-pytriton}
ENGINE_BACKEND=${DLM_ENGINE_BACKEND:-onnxruntime}
MODEL=${DLM_MODEL:-models/default}
ENGINE_DIR=${DLM_ENGINE_DIR:-build/engine}
WORKDIR=${DLM_WORKDIR:-build/container}
REPOSITORY=$WORKDIR/model_repository
ADDRESS=${DLM_ADDRESS:-0.0.0.0}
HTTP_PORT=${DLM_HTTP_PORT:-8000}
GRPC_PORT=${DLM_GRPC_PORT:-8001}
METRICS_PORT=${DLM_METRICS_PORT:-8002}
PYTHON=${PYTHON:-python3}

run() {
    if [[ ${DLM_DRY_RUN:-0} == 1 ]]; then
        printf '%q ' "$@"
        printf '\n'
    else
        "$@"
    fi
}

build_engine() {
    if [[ $ENGINE_BACKEND == tensorrt ]]; then
        run bash docker/build_engine.sh "$MODEL" "$ENGINE_DIR"
    else
        run "$PYTHON" -m export --model "$MODEL" --backend "$ENGINE_BACKEND" --out "$ENGINE_DIR"
    fi
}

prepare() {
    mkdir -p "$ENGINE_DIR" "$WORKDIR"
    if [[ ! -f $ENGINE_DIR/manifest.json ]]; then
        # One builder per volume: the others wait on the lock, then find the manifest.
        exec 9>"$ENGINE_DIR/.build.lock"
        flock 9
        if [[ ! -f $ENGINE_DIR/manifest.json ]]; then
            echo "no $ENGINE_DIR/manifest.json: building the $ENGINE_BACKEND engine"
            build_engine
        fi
        flock -u 9
    fi
    # shellcheck disable=SC2086  # DLM_FILL_ARGS is a list of flags
    run "$PYTHON" -m model_repository.fill --model "$MODEL" --engine "$ENGINE_DIR" \
        --out "$REPOSITORY" ${DLM_FILL_ARGS:-}
}

serve() {
    if [[ ! -f $REPOSITORY/ensemble/config.pbtxt && ${DLM_DRY_RUN:-0} != 1 ]]; then
        echo "error: $REPOSITORY has no ensemble: run '$0 prepare' first" >&2
        exit 2
    fi
    # Both images run the same `python -m model_repository.serve` (`make serve`): the server and
    # the stub supervisor that reloads a model whose Python backend stub died. It reads
    # DLM_ADMIN_KEY itself; DLM_TRITON_HOME names the tritonserver folder it runs.
    local home
    case $SERVER in
    pytriton) home=${DLM_TRITON_HOME:-} ;;              # the nvidia-pytriton wheel's (empty)
    tritonserver) home=${DLM_TRITON_HOME:-/opt/tritonserver} ;; # the NGC image's
    *)
        echo "error: DLM_SERVER=$SERVER: must be pytriton or tritonserver" >&2
        exit 2
        ;;
    esac
    run exec env DLM_TRITON_HOME="$home" "$PYTHON" -m model_repository.serve \
        --repository "$REPOSITORY" --backend-dir "$WORKDIR/backends" --address "$ADDRESS" \
        --http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT" --metrics-port "$METRICS_PORT" "$@"
}

case ${1:-run} in
run)
    shift || true
    prepare
    serve "$@"
    ;;
prepare) prepare ;;
serve)
    shift
    serve "$@"
    ;;
*) exec "$@" ;;
esac
