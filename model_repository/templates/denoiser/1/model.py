"""denoiser: the engine and the KV cache per sequence (dlm.serving.denoiser).

One execute = one batched engine step: inputs and outputs are dlm.serving.wire's (token ids and
confidences only, never logits). Sequences released in `control` are dropped first. The engine is
export.engines.load_engine's (ONNX Runtime on CPU, TensorRT on GPU) when the export package
exists, else a TorchEngine (logged); BACKEND=torch forces the TorchEngine. DEVICE: where a
TorchEngine runs (cpu, cuda); the instance stays KIND_CPU, torch itself moves the work.
PASS_DELAY_MS > 0: fault injection for tests, every step held that long (0 when served).
Errors: a pass no engine could run (ValueError naming the field) fails that call only.
"""

import json
import sys

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = {
            k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()
        }
        sys.path.insert(0, params["REPO_ROOT"])
        from dlm.serving.denoiser import Denoiser, load_engine
        from dlm.serving.metrics import DenoiserMetrics
        from dlm.serving.wire import INPUTS

        engine = load_engine(
            params["MODEL_DIR"],
            params["ENGINE_DIR"],
            params["BACKEND"],
            int(params["THREADS"]),
            say=pb_utils.Logger.log_info,
            device=params["DEVICE"],
            pass_delay_s=int(params["PASS_DELAY_MS"]) / 1000,
        )
        self.denoiser, self.inputs = Denoiser(engine), INPUTS
        self.metrics = DenoiserMetrics(pb_utils)

    def execute(self, requests):
        responses = []
        for request in requests:
            arrays = {
                name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                for name in self.inputs
            }
            calls, passes = self.denoiser.calls, self.denoiser.passes
            try:
                out = self.denoiser(arrays)
            except ValueError as e:
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(f"denoiser: {e}"))
                )
                continue
            finally:
                self.metrics.update(
                    self.denoiser.live_sequences,
                    self.denoiser.calls - calls,
                    self.denoiser.passes - passes,
                )
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(k, v) for k, v in out.items()]
                )
            )
        return responses
