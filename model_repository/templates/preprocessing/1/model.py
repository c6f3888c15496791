"""preprocessing: text and knobs -> token ids and a validated request.

Inputs: the request schema's (dlm/schema.py, as in the ensemble); all but text_input and
max_tokens optional, absent ones take the model folder's generation_config.json defaults (and the
block length that the build dlm serves chose per mode, dlm.sampling.blocks). The
two required ones are optional to Triton and checked here, so that their absence is an error
naming them on every endpoint.
Outputs: input_ids INT32 [n]; request BYTES [1] (the knobs as JSON, serving.requests).
Errors: a request with a knob out of range gets its own error response naming the field and the
allowed values; the other requests of the batch proceed.
"""

import json
import sys

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = {
            k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()
        }
        sys.path.insert(0, params["REPO_ROOT"])
        from dlm.sampling import RequestError
        from dlm.schema import KNOBS
        from serving.engine import served_build
        from serving.requests import Preprocessor, from_inputs, served_limits

        self.errors, self.inputs = (RequestError,), [k.name for k in KNOBS]
        self.from_inputs = from_inputs
        chat = params["APPLY_CHAT_TEMPLATE"].lower() in ("1", "true", "yes")
        folder = params["MODEL_DIR"]
        build = served_build(folder, params["ENGINE_DIR"], params["BACKEND"])  # dlm's engine
        limits = served_limits(params)
        self.pre = Preprocessor(folder, limits, chat_template=chat, build=build)

    def execute(self, requests):
        responses = []
        for request in requests:
            inputs = {}
            for name in self.inputs:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    inputs[name] = tensor.as_numpy()
            try:
                ids, payload = self.from_inputs(self.pre, inputs)
            except self.errors as e:  # INVALID_ARG: HTTP 400, not 500
                error = pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("input_ids", ids.reshape(1, -1)),
                        pb_utils.Tensor(
                            "request", np.array([[payload.encode()]], dtype=np.object_)
                        ),
                    ]
                )
            )
        return responses
