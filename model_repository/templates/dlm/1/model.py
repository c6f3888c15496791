"""dlm (decoupled): the engine, its KV cache and the scheduler in one process. Hands each request
to one scheduler thread (serving.orchestrator) that runs one engine step for every request in
flight; the responses go out from a thread of their own (serving.outbox).

Inputs: input_ids INT32 [n]; request BYTES [1] (JSON knobs from preprocessing).
Outputs, per response: output_ids INT32 [n] (ALL tokens so far); shown INT32 [1] (how many the
previous response covered); final BOOL [1]; num_forward_passes, num_output_tokens INT32 [1]
(totals so far); block_ids INT32 [m] (the uncommitted rest of the block being denoised, if
asked, else empty); seq_key INT64 [1] (the sequence's key, serving.cancel); heartbeat BOOL [1];
error BYTES [1] ("" unless the request failed).
Streaming: with `stream`, the first committed tokens at once, then at most one response every
STREAM_INTERVAL_MS with what was committed meanwhile (every change of the block view, if asked);
without, exactly one data response. Heartbeats (no data, dropped by
postprocessing) go out for a request silent for HEARTBEAT_MS, so that postprocessing sees an
ensemble request's cancellation (Triton 2.51 marks only steps scheduled after it) and sends it
back here (serving.cancel). A request sent to dlm directly is asked `is_cancelled()` every
CANCEL_CHECK_MS (an ensemble request never: the answer is always no there, and each asking is an
IPC to the server, about 0.3-0.6 ms on the 2-core VM). The last response always carries the
FINAL flag; a cancelled request gets the FINAL flag alone.
Engine: serving.engine.load_engine (ENGINE_DIR's manifest: ONNX Runtime on CPU, TensorRT on GPU;
BACKEND=torch: the PyTorch engine on DEVICE, in DTYPE). One instance per device: KIND_CPU, or
KIND_GPU (one per GPU, the engine on the instance's GPU). THREADS: the engine's intra-op threads.
PASS_DELAY_MS > 0: fault injection for tests, every step held that long (0 when served).
Limits: requests in flight share a KV budget of KV_BUDGET_TOKENS cached positions (each needs
prompt + max_tokens + one block); the others wait, at most MAX_QUEUED of them.
Errors: a request that does not parse gets an error response with the FINAL flag, naming the
field. Later errors (`busy: ...` naming the limit, kv_budget_tokens or max_queued; a failed step;
shutdown) ride on the last response's `error` output, and postprocessing turns them into the error
response, after the responses before it: Triton 2.51's ensemble never releases a request whose
decoupled step sends an error while a later step of that request is still queued (seen: every
such stream still in flight at a shutdown's exit timeout).
"""

import json
import logging
import sys

import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args):
        params = {
            k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()
        }
        sys.path.insert(0, params["REPO_ROOT"])
        logging.basicConfig(level=logging.INFO, format="dlm %(name)s: %(message)s")
        from dlm.sampling import RequestError
        from serving import orchestrator as orch
        from serving.cancel import Inbox
        from serving.engine import MeteredEngine, load_engine
        from serving.metrics import ServingMetrics
        from serving.requests import from_wire, served_limits

        self.orch, self.from_wire, self.errors = orch, from_wire, (RequestError, ValueError)
        device = params["DEVICE"]
        if args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args['model_instance_device_id']}"
        limits, max_batch = served_limits(params), int(params["MAX_PASSES_PER_STEP"])
        engine = MeteredEngine(
            load_engine(
                params["MODEL_DIR"],
                params["ENGINE_DIR"],
                params["BACKEND"],
                int(params["THREADS"]),
                say=pb_utils.Logger.log_info,
                device=device,
                pass_delay_s=int(params["PASS_DELAY_MS"]) / 1000,
                dtype=params["DTYPE"],
                kv_hold=(max_batch, limits.longest),
            )
        )
        self.inbox = Inbox()
        self.orchestrator = orch.Orchestrator(
            engine,
            limits,
            max_batch=max_batch,
            metrics=ServingMetrics(pb_utils, engine),
            heartbeat_s=int(params["HEARTBEAT_MS"]) / 1000,
            stream_interval_s=int(params["STREAM_INTERVAL_MS"]) / 1000,
            cancel_check_s=int(params["CANCEL_CHECK_MS"]) / 1000,
            kv_budget_tokens=int(params["KV_BUDGET_TOKENS"]),
            max_queued=int(params["MAX_QUEUED"]),
            cache=params["DIFFUSION_CACHE"],
            inbox=self.inbox,
        ).start()

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy()
                payload = pb_utils.get_input_tensor_by_name(request, "request").as_numpy()
                gen, delivery = self.from_wire(ids, payload.reshape(-1)[0])
            except self.errors as e:
                error = pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)
                sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
                continue
            self.orchestrator.submit(
                gen,
                emit=lambda ev, s=sender: self._send(s, ev),
                is_cancelled=None if delivery["ensemble"] else request.is_cancelled,
                stream=delivery["stream"],
                block_views=delivery["block_views"],
            )
        return None

    def _send(self, sender, event):
        if event.finish_reason == "cancelled":
            sender.send(flags=FINAL)
        else:
            tensors = [pb_utils.Tensor(k, v) for k, v in self.orch.event_arrays(event).items()]
            sender.send(
                pb_utils.InferenceResponse(output_tensors=tensors),
                flags=FINAL if event.final else 0,
            )

    def finalize(self):
        self.orchestrator.stop()
        self.inbox.close()
