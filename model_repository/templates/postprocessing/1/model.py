"""postprocessing (decoupled): token ids -> text, stateless and incremental (serving.detok).

Inputs: dlm's outputs (output_ids = ALL tokens so far, shown, final, totals, block_ids, seq_key,
heartbeat, error).
Outputs: text_output BYTES [1] (the text these tokens add: no broken UTF-8, no lost spaces; the
texts of a stream concatenate to the whole answer); num_forward_passes, num_output_tokens
INT32 [1] (passed through); block_text BYTES [1] (the rest of the block being denoised, masks
as a placeholder, or "").
Each request gets one response: none for a heartbeat (FINAL flag alone), the error response for
one that carries dlm's `error`. A request marked cancelled (the client cancelled the ensemble
request) gets the FINAL flag alone, and its key is sent to the dlm instance that runs it
(serving.cancel), whose scheduler drops it and frees its cache before its next pass. dlm's final
response is not asked (the sequence is over; each asking is an IPC to the server).
"""

import functools
import json
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _input(request, name):
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()


class TritonPythonModel:
    def initialize(self, args):
        params = {
            k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()
        }
        sys.path.insert(0, params["REPO_ROOT"])
        from serving import cancel
        from serving.detok import Postprocessor

        self.post, self.cancel = Postprocessor(params["MODEL_DIR"]), cancel

    def execute(self, requests):
        cancel = []
        for request in requests:
            get = functools.partial(_input, request)
            sender = request.get_response_sender()
            final = bool(get("final").reshape(-1)[0])
            # dlm's last response ends the request anyway: only the others ask (an IPC each)
            if not final and request.is_cancelled():
                cancel.append(int(get("seq_key").reshape(-1)[0]))
                # FINAL flag alone: an error response here leaves the ensemble request in
                # flight for ever in 2.51 (dlm is still sending), and blocks shutdown.
                sender.send(flags=FINAL)
                continue
            if bool(get("heartbeat").reshape(-1)[0]):
                sender.send(flags=FINAL)
                continue
            error = get("error").reshape(-1)[0].decode()
            if error:  # dlm's last response for a failed request (see dlm's model.py)
                sender.send(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(error)), flags=FINAL
                )
                continue
            text, view = self.post(
                get("output_ids").reshape(-1),
                int(get("shown").reshape(-1)[0]),
                final,
                get("block_ids").reshape(-1),
            )
            sender.send(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor(
                            "text_output", np.array([[text.encode()]], dtype=np.object_)
                        ),
                        pb_utils.Tensor("num_forward_passes", get("num_forward_passes")),
                        pb_utils.Tensor("num_output_tokens", get("num_output_tokens")),
                        pb_utils.Tensor(
                            "block_text", np.array([[view.encode()]], dtype=np.object_)
                        ),
                    ]
                ),
                flags=FINAL,
            )
        if cancel:
            self._cancel(cancel)
        return None

    def _cancel(self, keys):
        lost = self.cancel.send(keys)
        if lost:  # that dlm instance is gone, and its sequences with it
            pb_utils.Logger.log_warn(f"postprocessing: no dlm instance for cancelled {lost}")
