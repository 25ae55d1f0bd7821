"""An OpenAI-compatible embeddings server for one mlx-embeddings model.

mlx-lama's gateway talks to every engine over the OpenAI API, but mlx-embeddings
is a library with no server of its own, and vllm-mlx serves embeddings only next
to a chat model. This program is the engine for embedding models: it loads one
model folder with ``mlx_embeddings.load`` and answers ``POST /v1/embeddings``
(plus ``GET /health`` and ``GET /v1/models``).

It runs in the mlx-embeddings environment's own Python, so it imports only the
standard library, ``mlx.core`` and ``mlx_embeddings``, never mlx_lama::

    PYTHON embedding_server.py --model /abs/model/folder --host 127.0.0.1 \\
        --port 8123 --served-model-name NAME

Beyond OpenAI's request fields it takes ``truncate`` (Ollama's meaning, default
true): an input longer than the model's context is cut to it, or refused with
a 400 when false.

Requests are read on threads of their own, but every MLX call (loading, each
forward pass) happens on the main thread, one at a time: MLX is not to be used
by two threads at once, and since mlx 0.31.2 its streams belong to the thread
that made them (mlx_lm.server, likewise, runs its model on one thread).
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import queue
import signal
import struct
import sys
import threading
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import mlx.core as mx

BATCH_TOKENS = 8192  # padded token positions per forward pass
DEFAULT_CONTEXT = 512
SANE_MAX_LENGTH = 1_000_000  # above it, a tokenizer's model_max_length means "unset"


class ApiError(Exception):
    """An error answered as OpenAI's JSON error object with ``status``."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


class Embedder:
    """One loaded model: tokenise, batch, embed. Made on the main thread, whose
    :meth:`run` does the MLX work that request threads ask for with :meth:`embed`."""

    def __init__(self, folder: str, name: str) -> None:
        from mlx_embeddings import load, tokenizer_utils  # type: ignore[import-not-found]

        if not (Path(folder) / "config.json").is_file():  # else load() asks the Hub
            raise FileNotFoundError(f"{folder} is not a model folder (no config.json)")
        self.name = name
        self.model, wrapper = load(folder)
        wrapped = isinstance(wrapper, tokenizer_utils.TokenizerWrapper)
        tokenizer = wrapper._tokenizer if wrapped else wrapper
        self.tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor's own
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
        config = {**config.get("text_config", {}), **config}
        self.context = int(config.get("max_position_embeddings") or DEFAULT_CONTEXT)
        limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(limit, int) and 0 < limit < SANE_MAX_LENGTH:
            self.context = min(self.context, limit)
        self.vocab_size = int(config.get("vocab_size") or len(self.tokenizer))
        self.pad_id = int(getattr(self.tokenizer, "pad_token_id", None) or 0)
        self._tokenizer_lock = threading.Lock()  # a fast tokenizer's truncation is a state
        self._jobs: queue.Queue[tuple[list[list[int]], Future[list[list[float]]]]] = queue.Queue()
        # One pass now proves the model embeds text, and tells the vector's size.
        self.size = len(self._embed_now(self.tokenize(["hello"], truncate=True))[0])

    def run(self, stopping: threading.Event) -> None:
        """On the thread that made this: embed what :meth:`embed` asks, until ``stopping``."""
        while not stopping.is_set():
            try:
                inputs, future = self._jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                future.set_result(self._embed_now(inputs))
            except Exception as error:  # the request's thread raises it
                future.set_exception(error)

    def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        """From any thread: the vectors of token lists, as :meth:`run` makes them."""
        future: Future[list[list[float]]] = Future()
        self._jobs.put((inputs, future))
        return future.result()

    def tokenize(self, texts: list[str], truncate: bool) -> list[list[int]]:
        with self._tokenizer_lock:
            ids: list[list[int]] = self.tokenizer(texts, add_special_tokens=True)["input_ids"]
            long = [i for i, tokens in enumerate(ids) if len(tokens) > self.context]
            if long and not truncate:
                raise self.too_long(long[0], len(ids[long[0]]))
            if long:
                cut = self.tokenizer(
                    [texts[i] for i in long],
                    add_special_tokens=True,
                    truncation=True,
                    max_length=self.context,
                )["input_ids"]
                for i, tokens in zip(long, cut, strict=True):
                    ids[i] = tokens
        for i, tokens in enumerate(ids):
            if not tokens:
                raise ApiError(400, f"input {i} has no tokens", "input")
        return ids

    def is_token(self, value: Any) -> bool:
        return (
            isinstance(value, int) and not isinstance(value, bool) and 0 <= value < self.vocab_size
        )

    def too_long(self, index: int, count: int) -> ApiError:
        return ApiError(
            400,
            f"input {index} has {count} tokens, more than this model's context length of "
            f'{self.context}: shorten it, or send "truncate": true to cut it to the context',
            "input",
        )

    def _embed_now(self, inputs: list[list[int]]) -> list[list[float]]:
        """Embed token lists, shortest first in batches of at most BATCH_TOKENS
        padded positions; the vectors come back in the order of ``inputs``."""
        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
        vectors: list[list[float]] = [[] for _ in inputs]
        batch: list[int] = []
        for position, i in enumerate(order):
            batch.append(i)
            following = order[position + 1] if position + 1 < len(order) else None
            if following is None or (len(batch) + 1) * len(inputs[following]) > BATCH_TOKENS:
                for j, vector in zip(batch, self._forward([inputs[j] for j in batch]), strict=True):
                    vectors[j] = vector
                batch = []
        return vectors

    def _forward(self, batch: list[list[int]]) -> list[list[float]]:
        width = max(len(tokens) for tokens in batch)
        ids = [tokens + [self.pad_id] * (width - len(tokens)) for tokens in batch]
        mask = [[1] * len(tokens) + [0] * (width - len(tokens)) for tokens in batch]
        try:
            output = self.model(mx.array(ids), attention_mask=mx.array(mask))
            vectors: list[list[float]] = output.text_embeds.astype(mx.float32).tolist()
        finally:
            mx.clear_cache()
        return vectors

    def answer(self, body: Any) -> dict[str, Any]:
        """The response to a ``POST /v1/embeddings`` body (raises ApiError)."""
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        model = body.get("model")
        if model is not None and model != self.name:
            raise ApiError(
                404, f"model {model!r} not found: this server serves {self.name!r}", "model"
            )
        truncate = body.get("truncate", True)
        if not isinstance(truncate, bool):
            raise ApiError(400, "truncate must be true or false", "truncate")
        dimensions = body.get("dimensions")
        if dimensions is not None and (
            not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1
        ):
            raise ApiError(400, "dimensions must be a positive integer", "dimensions")
        if dimensions is not None and dimensions > self.size:
            raise ApiError(
                400, f"dimensions {dimensions} is more than this model's {self.size}", "dimensions"
            )
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise ApiError(400, 'encoding_format must be "float" or "base64"', "encoding_format")
        inputs = self.inputs(body.get("input"), truncate)
        vectors = self.embed(inputs)
        if dimensions is not None:
            vectors = [shorten(vector, dimensions) for vector in vectors]
        tokens = sum(len(tokens) for tokens in inputs)
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": encode(v, encoding)}
                for i, v in enumerate(vectors)
            ],
            "model": self.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def inputs(self, value: Any, truncate: bool) -> list[list[int]]:
        """``input`` (a string, strings, token ids or lists of them) as token lists."""
        if isinstance(value, str):
            value = [value]
        wrong = ApiError(
            400, "input must be a string, a list of strings, or token ids (lists of them) "
            f"below the vocabulary size {self.vocab_size}", "input",
        )  # fmt: skip
        if not isinstance(value, list) or not value:
            raise wrong
        if all(isinstance(v, str) for v in value):
            if not all(value):
                raise ApiError(400, "input must not be an empty string", "input")
            return self.tokenize(value, truncate)
        if all(isinstance(v, int) for v in value):
            value = [value]
        if not all(isinstance(v, list) and v and all(map(self.is_token, v)) for v in value):
            raise wrong
        for i, tokens in enumerate(value):
            if len(tokens) > self.context and not truncate:
                raise self.too_long(i, len(tokens))
        return [tokens[: self.context] for tokens in value]


def shorten(vector: list[float], dimensions: int) -> list[float]:
    """The first ``dimensions`` values, of unit length again (Matryoshka embeddings)."""
    head = vector[:dimensions]
    norm = sum(x * x for x in head) ** 0.5
    return [x / norm for x in head] if norm > 0 else head


def encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":  # little-endian float32, as the openai client decodes it
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every answer has a Content-Length
    # Headers and body go out in two writes: with Nagle's algorithm the body waits for
    # the client's delayed ACK of the headers, 40 ms on Linux, on every request.
    disable_nagle_algorithm = True
    embedder: Embedder  # set on the subclass main() makes

    def do_GET(self) -> None:
        if self.path == "/health":
            self.send_json(200, {"status": "ok"})
        elif self.path == "/v1/models":
            model = {"id": self.embedder.name, "object": "model", "owned_by": "mlx-lama"}
            self.send_json(200, {"object": "list", "data": [model]})
        else:
            self.send_error_json(ApiError(404, f"no such path: GET {self.path}"))

    def do_POST(self) -> None:
        length = self.headers.get("Content-Length", "0")
        raw = self.rfile.read(int(length) if length.isdigit() else 0)  # all: keep-alive
        self.close_connection = self.close_connection or not length.isdigit()
        if self.path != "/v1/embeddings":
            self.send_error_json(ApiError(404, f"no such path: POST {self.path}"))
            return
        try:
            try:
                body = json.loads(raw)
            except ValueError as error:
                raise ApiError(400, f"the request body is not valid JSON: {error}") from None
            self.send_json(200, self.embedder.answer(body))
        except ApiError as error:
            self.send_error_json(error)
        except Exception as error:  # an answer, never a hung connection
            self.log_error("embedding failed: %r", error)
            message = f"embedding failed: {type(error).__name__}: {error}"
            self.send_error_json(ApiError(500, message))

    def send_error_json(self, error: ApiError) -> None:
        kind = "invalid_request_error" if error.status < 500 else "server_error"
        detail = {"message": error.message, "type": kind, "param": error.param, "code": None}
        self.send_json(error.status, {"error": detail})

    def send_json(self, status: int, payload: object) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


class Server(ThreadingHTTPServer):
    request_queue_size = 1024  # a burst of clients queues instead of being refused
    daemon_threads = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="An OpenAI-compatible embeddings server.")
    parser.add_argument("--model", required=True, help="the model folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--served-model-name", help="the model's name (default: the folder's)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    # Run as a script, this folder comes first on sys.path, and mlx-lama's modules
    # in it (mlx_embeddings.py, mlx_lm.py) would shadow the real packages.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    name = args.served_model_name or Path(args.model).name
    try:
        embedder = Embedder(args.model, name)
        server = Server((args.host, args.port), type("Bound", (Handler,), {"embedder": embedder}))
    except Exception as error:  # one line, not a traceback
        where = f"{args.model} on {args.host}:{args.port}"
        print(f"mlx-lama embedding server: cannot serve {where}: {error}", file=sys.stderr)
        return 1
    # Not "sequence length is longer than the specified maximum": truncate says what then.
    logging.getLogger("transformers").setLevel(logging.ERROR)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stopping.set())
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    print(f"mlx-lama embedding server: {name} on http://{args.host}:{args.port}", flush=True)
    try:
        embedder.run(stopping)
    finally:
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
