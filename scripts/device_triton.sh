#!/usr/bin/env bash
# The Triton serving path on a machine without tritonserver (the GPU one), as one command:
# unpack scripts/pack_triton.py's archive, fill the model repository for DEVICE, start the real
# tritonserver (model_repository.serve with DLM_TRITON_HOME; NumPy 1 for its Python backend
# stubs where the machine's Python has NumPy 2), one request per mode with the
# project's client, then perf_analyzer per mode and concurrency (benchmarks.bench --url).
# See benchmarks/README.md "Triton on a GPU".
#   here:  .venv/bin/python scripts/pack_triton.py           # -> build/triton_pack/triton.tar.xz
#   there: bash scripts/device_triton.sh                      # carry build/triton_pack
#   here, the same path on the CPU:
#          DEVICE=cpu PYTHON=.venv/bin/python MODES=self_spec CONCURRENCY=1 \
#            bash scripts/device_triton.sh
# Settings (environment): DEVICE (cuda), DTYPE (auto: bf16 on a GPU), PYTHON (python3), MODEL (models/default), MODES,
# CONCURRENCY, REQUESTS, MAX_TOKENS, THREADS, PACK, WORK (/tmp/dlm-triton), OUT (build/device_triton),
# HTTP_PORT (18000; gRPC and metrics on the next two), BENCH_TIMEOUT (seconds, 360), PROMPTS (8) and MODES_TIMEOUT (seconds per benchmarks.modes
# run, 240; 0 skips them), PASS_PRESET (nemotron-labs-diffusion-8b: benchmarks.served_pass on a
# GPU), PASS_CONTEXT (2048; 512 on the CPU) and PASS_TIMEOUT (seconds, 420; 0 skips it).
# Into OUT (8 files at most come back from the device tool): device_triton.log, server.log,
# summary.md, bench.csv, bench.json, bench_files.tar.gz (perf_analyzer's own outputs), modes.md
# and modes_files.tar.gz (benchmarks.modes at MAX_TOKENS and the reference at 256 tokens).
set -uo pipefail
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-auto}
PY=${PYTHON:-python3}
MODEL=${MODEL:-models/default}
MODES=${MODES:-ar auto diffusion diffusion_f1 self_spec self_spec_b4 self_spec_b8 self_spec_b16}
CONCURRENCY=${CONCURRENCY:-1 8}
REQUESTS=${REQUESTS:-8}
MAX_TOKENS=${MAX_TOKENS:-64}
THREADS=${THREADS:-0}
PACK=${PACK:-build/triton_pack/triton.tar.xz}
WORK=${WORK:-/tmp/dlm-triton}
OUT=${OUT:-build/device_triton}
HTTP_PORT=${HTTP_PORT:-18000}
PROMPTS=${PROMPTS:-8}
MODES_TIMEOUT=${MODES_TIMEOUT:-240}
PASS_PRESET=${PASS_PRESET:-nemotron-labs-diffusion-8b}
PASS_CONTEXT=${PASS_CONTEXT:-$([[ $DEVICE == cpu ]] && echo 512 || echo 2048)}
PASS_TIMEOUT=${PASS_TIMEOUT:-420}
GRPC_PORT=$((HTTP_PORT + 1))
METRICS_PORT=$((HTTP_PORT + 2))
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
exec > >(tee "$OUT/device_triton.log") 2>&1
export PYTHONUNBUFFERED=1
log() { echo "== $(date +%T) $*"; }
fail() { log "FAILED: $*"; exit 1; }
start=$(date +%s)

[[ -f $PACK ]] || fail "$PACK missing: run scripts/pack_triton.py and carry build/triton_pack"
if [[ $DEVICE != cpu ]]; then
  log "device: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"
fi

log "unpack $PACK ($(du -h "$PACK" | cut -f1)) into $WORK"
rm -rf "$WORK" && mkdir -p "$WORK/tmp"
tar -C "$WORK" -xJf "$PACK" || "$PY" -m tarfile -e "$PACK" "$WORK" || fail "unpack"
export DLM_TRITON_HOME=$WORK/triton PERF_ANALYZER=$WORK/triton/bin/perf_analyzer TMPDIR=$WORK/tmp
export PYTHONPATH=$WORK/triton/site${PYTHONPATH:+:$PYTHONPATH}
ver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[[ -f $DLM_TRITON_HOME/python_backend_stubs/$ver/triton_python_backend_stub ]] \
  || fail "the pack has no Python $ver backend stub (pack_triton.py --stubs $ver ...)"
# The 2.51 stub sends empty output tensors under NumPy 2: where this Python has NumPy 2, a venv
# with the packed NumPy 1 first and this Python's packages (torch, tokenizers, ...) after it.
if "$PY" -c 'import sys, numpy; sys.exit(int(numpy.__version__.split(".")[0]) < 2)'; then
  log "NumPy 2 in $PY: venv $WORK/venv with the packed NumPy 1 over its packages"
  "$PY" -m venv --without-pip "$WORK/venv" || fail "venv"
  "$WORK/venv/bin/python" - "$DLM_TRITON_HOME/numpy1" "$("$PY" -c 'import site, json
print(json.dumps(site.getsitepackages()))')" <<'EOF' || fail "NumPy 1 venv"
import json, shutil, site, sys
here = site.getsitepackages()[0]
shutil.copytree(sys.argv[1], here, dirs_exist_ok=True)
with open(f"{here}/zz_base_packages.pth", "w") as f:  # after this venv's own, .pth order
    f.writelines(f"import site; site.addsitedir({d!r})\n" for d in json.loads(sys.argv[2]))
EOF
  PY=$WORK/venv/bin/python
fi
"$PY" -c "import sys, torch, numpy; print(sys.executable, sys.version.split()[0], 'torch',
  torch.__version__, 'cuda', torch.cuda.is_available(), 'numpy', numpy.__version__)" \
  || fail "no torch for $PY"
# The stub links libpython$ver.so.1.0: this Python's own if it has one, else the packed one.
if ! "$PY" - "$ver" <<'EOF'; then
import ctypes, sys, sysconfig
name = f"libpython{sys.argv[1]}.so.1.0"
for path in (f"{sysconfig.get_config_var('LIBDIR')}/{name}", f"{sys.base_prefix}/lib/{name}", name):
    try:
        ctypes.CDLL(path)
        print("libpython:", path)
        break
    except OSError:
        pass
else:
    sys.exit(1)
EOF
  [[ -f $DLM_TRITON_HOME/pylib/libpython$ver.so.1.0 ]] || fail "no libpython$ver.so.1.0"
  log "libpython$ver.so.1.0: the packed one"
  export LD_LIBRARY_PATH=$DLM_TRITON_HOME/pylib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
"$PERF_ANALYZER" --version 2>&1 | grep -m 1 "Perf Analyzer Version" || fail "perf_analyzer does not run"
"$PY" -c "import tritonclient.grpc, rapidjson; print('tritonclient from', tritonclient.__path__[0])" \
  || fail "client packages"

log "fill the model repository: $MODEL, PyTorch engine on $DEVICE in $DTYPE"
"$PY" -m model_repository.fill --model "$MODEL" --backend torch --device "$DEVICE" \
  --dtype "$DTYPE" --threads "$THREADS" --out "$WORK/model_repository" || fail "fill"

log "start tritonserver"
"$PY" -m model_repository.serve --repository "$WORK/model_repository" \
  --backend-dir "$WORK/backends" --http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT" \
  --metrics-port "$METRICS_PORT" >"$OUT/server.log" 2>&1 &
server=$!
stop_server() {
  kill -TERM "$server" 2>/dev/null && wait "$server"
  log "server stopped; $(($(date +%s) - start)) s in all"
}
trap stop_server EXIT
ready=0
for _ in $(seq 120); do
  kill -0 "$server" 2>/dev/null || { tail -n 60 "$OUT/server.log"; fail "tritonserver exited"; }
  if "$PY" -c "import urllib.request as u
u.urlopen('http://127.0.0.1:$HTTP_PORT/v2/models/ensemble/ready', timeout=2)" 2>/dev/null; then
    ready=1 && break
  fi
  sleep 2
done
((ready)) || { tail -n 60 "$OUT/server.log"; fail "not ready in 240 s"; }
log "ready after $(($(date +%s) - start)) s"
grep -m 3 "engine:" "$OUT/server.log"

for mode in ar diffusion self_spec; do
  log "client: --mode $mode"
  timeout 120 "$PY" -m client --url "127.0.0.1:$GRPC_PORT" --prompt "def fib(n):" --mode "$mode" \
    --max-tokens "$MAX_TOKENS" --no-block || fail "client --mode $mode"
done

log "perf_analyzer: modes $MODES, concurrency $CONCURRENCY"
# shellcheck disable=SC2086  # MODES and CONCURRENCY are lists
timeout "${BENCH_TIMEOUT:-360}" "$PY" -m benchmarks.bench --url "127.0.0.1:$GRPC_PORT" \
  --modes $MODES --concurrency $CONCURRENCY --requests "$REQUESTS" --max-tokens "$MAX_TOKENS" \
  --timeout 150 --out "$WORK/bench"
rc=$?
cp "$WORK"/bench/{summary.md,bench.csv,bench.json} "$OUT"/ 2>/dev/null
tar -C "$WORK/bench" -czf "$OUT/bench_files.tar.gz" . 2>/dev/null
((rc == 0)) || fail "benchmarks.bench (rc $rc)"
trap - EXIT && stop_server

# One AR pass at a long context in process and through Triton, against the weight-read floor:
# on a GPU the 8B preset with random bf16 weights (made and saved on the machine, ~16 GB), on
# the CPU the served model. Its table goes to the log.
if ((PASS_TIMEOUT > 0)); then
  if [[ $DEVICE == cpu ]]; then pass_model=(--model "$MODEL"); else pass_model=(--preset "$PASS_PRESET"); fi
  log "benchmarks.served_pass: ${pass_model[*]} at $PASS_CONTEXT cached tokens on $DEVICE"
  timeout "$PASS_TIMEOUT" "$PY" -m benchmarks.served_pass "${pass_model[@]}" --device "$DEVICE" \
    --dtype "$DTYPE" --threads "$THREADS" --context "$PASS_CONTEXT" || log "served_pass failed (rc $?)"
fi

# The modes side by side on the same engine, in process and through Triton (a server of its own),
# with the no-cache LLaDA reference; then the reference alone at 256 tokens, in process.
if ((MODES_TIMEOUT > 0)); then
  log "benchmarks.modes on $DEVICE: in process, through Triton, LLaDA reference"
  timeout "$MODES_TIMEOUT" "$PY" -m benchmarks.modes --backend torch --device "$DEVICE" \
    --threads "$THREADS" --prompts "$PROMPTS" --max-tokens "$MAX_TOKENS" --reference \
    --out "$WORK/modes" || log "benchmarks.modes failed (rc $?)"
  timeout "$MODES_TIMEOUT" "$PY" -m benchmarks.modes --backend torch --device "$DEVICE" \
    --threads "$THREADS" --prompts 4 --max-tokens 256 --reference --no-triton \
    --settings "diffusion steps=8" --out "$WORK/modes_256" || log "modes at 256 failed (rc $?)"
  cp "$WORK/modes/modes.md" "$OUT"/ 2>/dev/null
  tar -C "$WORK" -czf "$OUT/modes_files.tar.gz" modes modes_256 2>/dev/null
fi
log "done: $OUT; $(($(date +%s) - start)) s in all"
