"""The front door's way to Triton: tritonclient's asyncio gRPC streaming API against `ensemble`.

One gRPC stream per request, as the command-line client does. Leaving `generate` early (the
HTTP client went away, a sibling choice failed) cancels the stream, which Triton turns into the
request's cancellation: the `dlm` model frees its KV within a pass.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import tritonclient.grpc.aio as grpcaio
from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE
from tritonclient.utils import InferenceServerException

from client.api import Update, grpc_inputs, grpc_response, request_values

RECONNECT_MS = 500


class TritonError(RuntimeError):
    """Triton's error for a request (a validation message names the input), or unreachable."""

    def __init__(self, message: str, unavailable: bool = False) -> None:
        super().__init__(message)
        self.unavailable = unavailable


class Triton:
    def __init__(self, url: str, model: str = "ensemble") -> None:
        self.url, self.model = url, model
        self.client: grpcaio.InferenceServerClient | None = None

    async def open(self) -> None:
        """The gRPC channel, made on the event loop that will use it. The front door may start
        before Triton listens (`make serve` starts both): reconnect attempts at most RECONNECT_MS
        apart, not gRPC's default backoff of up to two minutes, so it answers once Triton does."""
        backoff = [(f"grpc.{k}_reconnect_backoff_ms", RECONNECT_MS) for k in ("initial", "max")]
        self.client = grpcaio.InferenceServerClient(
            self.url,
            channel_args=[
                ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
                ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
                *backoff,
            ],
        )

    async def ready(self) -> bool:
        try:
            return await self.client.is_model_ready(self.model)
        except InferenceServerException:
            return False

    async def generate(self, prompt: str, knobs: dict) -> AsyncIterator[Update]:
        """The request's responses (one unless `knobs["stream"]`), ending after the final one."""
        knobs = dict(knobs)
        inputs = grpc_inputs(request_values(prompt, knobs.pop("max_tokens"), **knobs))

        async def one_request():
            yield {
                "model_name": self.model,
                "inputs": inputs,
                "parameters": {"triton_enable_empty_final_response": True},
            }

        try:
            responses = self.client.stream_infer(one_request())
        except InferenceServerException as e:
            raise TritonError(f"{self.url}: {e.message()}", unavailable=True) from None
        finished = False
        try:
            async for result, error in responses:
                if error is not None:
                    finished = True
                    raise TritonError(_own(error.message()))
                update, finished = grpc_response(result)
                if update is not None:
                    yield update
                if finished:
                    return
        except grpc.RpcError as e:  # the stream broke (server gone, unreachable)
            finished = True
            raise TritonError(f"{self.url}: {e.details()}", unavailable=True) from None
        finally:
            if not finished:
                responses.cancel()

    async def close(self) -> None:
        await self.client.close()


def _own(message: str) -> str:
    """The model's message without Triton's "in ensemble 'ensemble', " in front of it."""
    head, sep, rest = message.partition(", ")
    return rest if sep and head.startswith("in ensemble ") else message
