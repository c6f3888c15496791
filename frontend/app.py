"""The OpenAI-compatible HTTP server (FastAPI): routes, the optional key, the body limit, SSE.

Every choice of a request is one Triton request (`frontend.triton`), run concurrently; a client
that goes away, streaming or not, cancels them all. The request logic is `frontend.protocol`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from dlm.engines import model_config
from dlm.schema import generation_defaults
from dlm.tokenizer import PLAIN_CHAT_TEMPLATE, TextTokenizer
from frontend.protocol import (
    Answer,
    ApiError,
    Choice,
    Parsed,
    StopText,
    model_name,
    param_of,
    parse,
)
from frontend.triton import Triton, TritonError

log = logging.getLogger("frontend")
STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY_BYTES = 1 << 20  # a request body larger than this is refused (413)
OPENAI_DEFAULT_MAX_TOKENS = 16  # OpenAI's default, for a model folder that sets none


@dataclass
class Settings:
    triton: str = "127.0.0.1:8001"  # Triton's gRPC address
    model: str | Path = "models/default"  # checkpoint folder: tokenizer, chat template, defaults
    model_name: str | None = None  # the id clients send as `model` (default: the folder's name)
    api_key: str | None = None  # with it, /v1/* needs `Authorization: Bearer <key>`
    max_body_bytes: int = MAX_BODY_BYTES


def create_app(settings: Settings) -> FastAPI:
    folder = Path(settings.model)
    name = model_name(folder, settings.model_name)
    tokenizer = TextTokenizer(folder)
    defaults = generation_defaults(folder)
    modes = model_config(folder).modes
    triton = Triton(settings.triton)

    @contextlib.asynccontextmanager
    async def lifespan(_):
        await triton.open()  # on the server's event loop
        yield
        await triton.close()

    async def check_key(request: Request) -> None:
        if settings.api_key:
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
                raise ApiError(401, "invalid or missing API key", type="authentication_error")

    app = FastAPI(title="dlm-triton", docs_url=None, redoc_url=None, lifespan=lifespan)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(check_key)])
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(ApiError)
    async def api_error(_, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(_, e: HTTPException):
        return JSONResponse(
            ApiError(e.status_code, str(e.detail)).body(), status_code=e.status_code
        )

    @app.get("/")
    async def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    async def health():
        ok = await triton.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    def model_object() -> dict:
        return {"id": name, "object": "model", "created": 0, "owned_by": "dlm-triton"}

    @v1.get("/models")
    async def models():
        return {"object": "list", "data": [model_object()]}

    @v1.get("/models/{model_id}")
    async def model(model_id: str):
        if model_id != name:
            raise _unknown_model(model_id, name)
        return model_object()

    @app.get("/playground.json")
    async def playground():
        """What the page needs: the model's name, the modes it serves and its defaults."""
        return {"model": name, "modes": list(modes), "defaults": defaults}

    async def body_of(request: Request) -> object:
        size, parts = 0, []
        async for part in request.stream():
            size += len(part)
            if size > settings.max_body_bytes:
                raise ApiError(413, f"request body over {settings.max_body_bytes} bytes")
            parts.append(part)
        try:
            return json.loads(b"".join(parts))
        except ValueError as e:
            raise ApiError(400, f"the request body is not JSON ({e})") from None

    def render(messages: list[dict]) -> str:
        return tokenizer.apply_chat_template(messages, PLAIN_CHAT_TEMPLATE)

    async def serve(request: Request, chat: bool):
        parsed = parse(
            await body_of(request),
            chat,
            render,
            defaults.get("max_tokens", OPENAI_DEFAULT_MAX_TOKENS),
        )
        if parsed.model != name:
            raise _unknown_model(parsed.model, name)
        run = Run(triton, parsed, Answer(parsed, chat, 0), chat)
        if parsed.stream:
            first = await run.start()  # an error before any text is a plain error answer
            return StreamingResponse(run.sse(first, tokenizer), media_type="text/event-stream")
        await _unless_disconnected(request, run.whole())
        run.answer.prompt_tokens = sum(len(tokenizer.encode(p)) for p in parsed.prompts)
        return run.answer.whole()

    @v1.post("/completions")
    async def completions(request: Request):
        return await serve(request, chat=False)

    @v1.post("/chat/completions")
    async def chat_completions(request: Request):
        return await serve(request, chat=True)

    app.include_router(v1)
    return app


def _unknown_model(given: str, name: str) -> ApiError:
    return ApiError(
        404,
        f"model {given!r} does not exist (this server has {name!r})",
        "model",
        code="model_not_found",
    )


def _api_error(e: TritonError, chat: bool) -> ApiError:
    message = str(e)
    if e.unavailable:
        return ApiError(503, f"Triton is unavailable: {message}", type="server_error")
    if message.startswith("busy:"):
        return ApiError(429, message, type="rate_limit_error", code="busy")
    param = param_of(message, chat)
    if param is not None:
        return ApiError(400, message, param)
    return ApiError(500, message, type="server_error")


async def _unless_disconnected(request: Request, work) -> None:
    """Run `work`; if the client disconnects first, cancel it (its Triton requests with it)."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, watch = asyncio.ensure_future(work), asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            log.info("client disconnected: request cancelled")
    try:
        await task
    except asyncio.CancelledError:
        raise ApiError(499, "client disconnected") from None


class Run:
    """The Triton requests of one OpenAI request: every (prompt, sample) as a task feeding one
    queue of (choice, update | None at its end | TritonError)."""

    def __init__(self, triton: Triton, parsed: Parsed, answer: Answer, chat: bool) -> None:
        self.triton, self.parsed, self.answer, self.chat = triton, parsed, answer, chat
        self.queue: asyncio.Queue = asyncio.Queue()
        self.tasks: list[asyncio.Task] = []

    def _requests(self):
        p = self.parsed
        for c in self.answer.choices:
            knobs = dict(p.knobs, random_seed=p.seeds[c.index % p.n], stream=p.stream)
            yield c, p.prompts[c.index // p.n], knobs

    async def _choice(self, c: Choice, prompt: str, knobs: dict) -> None:
        """Feeds the queue (c, new text, block text) per response, (c, None, None) at the end,
        (c, TritonError, None) on failure."""
        stop = StopText(knobs.get("stop_words", []))
        try:
            async for u in self.triton.generate(prompt, knobs):
                text = stop.push(u.text)
                c.text += text
                c.completion_tokens, c.forward_passes = u.num_output_tokens, u.num_forward_passes
                await self.queue.put((c, text, u.block_text))
                if stop.stopped:  # leaving the stream cancels the rest of the request
                    break
            if rest := stop.flush():
                c.text += rest
                await self.queue.put((c, rest, ""))
            # Short of max_tokens: an end token or a stop word ended it (the ensemble sends no
            # reason, so one that ends on its very last token reads as "length").
            stopped = stop.stopped or c.completion_tokens < knobs["max_tokens"]
            c.finish_reason = "stop" if stopped else "length"
            await self.queue.put((c, None, None))
        except TritonError as e:
            await self.queue.put((c, e, None))

    def _launch(self) -> None:
        self.tasks = [asyncio.ensure_future(self._choice(*r)) for r in self._requests()]

    def cancel(self) -> None:
        for t in self.tasks:
            t.cancel()

    async def whole(self) -> None:
        self._launch()
        try:
            for _ in self.tasks:
                while True:
                    c, item, _ = await self.queue.get()
                    if isinstance(item, TritonError):
                        raise _api_error(item, self.chat)
                    if item is None:
                        break
        finally:
            self.cancel()

    async def start(self):
        """Launch, and wait for the first event (an error then is answered as an error)."""
        self._launch()
        first = await self.queue.get()
        if isinstance(first[1], TritonError):
            self.cancel()
            raise _api_error(first[1], self.chat)
        return first

    async def sse(self, first, tokenizer: TextTokenizer) -> AsyncIterator[str]:
        """The stream's events: chunks as they come, `usage` if asked, then [DONE]."""
        a, p = self.answer, self.parsed
        started: set[int] = set()
        pending, item = len(self.tasks), first
        try:
            while True:
                c, text, block = item
                if isinstance(text, TritonError):
                    yield _data(_api_error(text, self.chat).body())
                    break
                new = c.index not in started
                started.add(c.index)
                if text is None:
                    if new and self.chat:
                        yield _data(a.chunk(c, "", first=True, usage=p.include_usage))
                    yield _data(a.chunk(c, None, usage=p.include_usage))
                    pending -= 1
                    if pending == 0:
                        break
                else:
                    block = block if p.knobs.get("return_block_text") else None
                    yield _data(a.chunk(c, text, new, block, usage=p.include_usage))
                item = await self.queue.get()
            if p.include_usage and pending == 0:
                a.prompt_tokens = sum(len(tokenizer.encode(x)) for x in p.prompts)
                yield _data(a.usage_chunk())
            yield "data: [DONE]\n\n"
        finally:  # ended, failed, or the client went away: nothing keeps running
            self.cancel()


def _data(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
