"""Servers the worker is measured against, each run as its own process by worker_bench.py.

- ``fastapi-floor``: FastAPI, one ``session.run`` per request, in the handler (no batching).
- ``fastapi-batcher``: FastAPI with the textbook asyncio batcher: a queue, a loop
  that gathers up to 32 requests or waits up to 5 ms, ``run_in_executor``.
- ``worker-asgi``: the worker's own routes, dataplane and batcher, served by
  uvicorn (httptools, uvloop) through a raw ASGI app instead of the worker's
  httptools protocol: the measurement behind the choice of HTTP server.
- ``trivial``: an httptools server that reads the body and answers a constant:
  the load client's own ceiling.

Peers decode JSON with the standard library, as the peers in
../shared/performance.md do; every ONNX Runtime session has intra_op_num_threads=2.
"""

import argparse
import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _decode(payload: dict[str, Any]) -> np.ndarray:
    tensor = payload["inputs"][0]
    return np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])


def _encode(name: str, y: np.ndarray) -> dict[str, Any]:
    output = {"name": "output", "datatype": "FP32", "shape": list(y.shape), "data": y.reshape(-1).tolist()}
    return {"model_name": name, "outputs": [output]}


def fastapi_floor(path: Path) -> Any:
    from fastapi import FastAPI, Request

    app = FastAPI()
    session = _session(path)

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> dict[str, Any]:
        x = _decode(await request.json())
        return _encode(name, session.run(None, {"input": x})[0])

    return app


def fastapi_batcher(path: Path, max_batch: int = 32, max_wait_s: float = 0.005) -> Any:
    from fastapi import FastAPI, Request

    session = _session(path)
    queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = asyncio.Queue()

    async def batch_loop() -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + max_wait_s
            while len(batch) < max_batch and (left := deadline - loop.time()) > 0:
                try:
                    batch.append(await asyncio.wait_for(queue.get(), left))
                except TimeoutError:
                    break
            x = np.concatenate([item[0] for item in batch])
            y = (await loop.run_in_executor(None, session.run, None, {"input": x}))[0]
            offset = 0
            for item, future in batch:
                future.set_result(y[offset : offset + len(item)])
                offset += len(item)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(batch_loop())
        yield
        task.cancel()

    app = FastAPI(lifespan=lifespan)

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> dict[str, Any]:
        x = _decode(await request.json())
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await queue.put((x, future))
        return _encode(name, await future)

    return app


def worker_asgi(path: Path, name: str) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    from inference_worker.config import ModelConfig, ServerConfig, WorkerConfig
    from inference_worker.http_api import Request as WorkerRequest
    from inference_worker.http_api import Response
    from inference_worker.server import Worker

    worker = Worker(WorkerConfig(ModelConfig(name, path), server=ServerConfig(http_port=0, grpc_port=-1)))

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()  # lifespan.startup
            serving = asyncio.get_running_loop().create_task(worker.serve(handle_signals=False))
            while not worker.dataplane.ready:
                await asyncio.sleep(0.05)
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
            worker.stop()
            await serving
            await send({"type": "lifespan.shutdown.complete"})
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        headers = dict(scope["headers"])
        length = headers.get(b"inference-header-content-length")
        request = WorkerRequest(
            scope["method"].encode(),
            scope["raw_path"],
            b"".join(chunks),
            int(length) if length is not None else None,
            headers.get(b"content-encoding"),
        )
        answered: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        worker.http_api.handle(request, answered.set_result)
        response = await answered
        out = [(b"content-type", response.content_type)]
        if response.header_length is not None:
            out.append((b"inference-header-content-length", str(response.header_length).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": out})
        await send({"type": "http.response.body", "body": b"".join(response.parts)})

    return app


class _Trivial(asyncio.Protocol):
    RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.transport.write(self.RESPONSE)


async def _serve_trivial(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_Trivial, "127.0.0.1", port, backlog=2048)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["fastapi-floor", "fastapi-batcher", "worker-asgi", "trivial"])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--name", default="model")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    import uvloop

    if args.kind == "trivial":
        uvloop.run(_serve_trivial(args.port))
        return
    import uvicorn

    builders: dict[str, Callable[[], Any]] = {
        "fastapi-floor": lambda: fastapi_floor(args.model),
        "fastapi-batcher": lambda: fastapi_batcher(args.model),
        "worker-asgi": lambda: worker_asgi(args.model, args.name),
    }
    app = builders[args.kind]()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        loop="uvloop",
        http="httptools",
        access_log=False,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
