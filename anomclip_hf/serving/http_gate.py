"""The front door of `anomclip serve`: a plain ASGI middleware in front of LitServe's routes.

LitServe reads request bodies as JSON or forms and answers 500 for anything it did not expect; a line sends
raw image bytes. So every /predict request is checked here first, in the HTTP process, before it reaches the
batching queue, and each problem gets its own status and a JSON `{"error": ..., "status": ...}` naming it:

    413  body over the size limit (Content-Length, or counted while reading)
    415  a content type other than image/* or multipart/form-data
    400  a multipart body without a file part, several categories served and none named, a query it cannot read
    404  an unknown category (the body names the served ones)
    405  another method than POST
    503  more requests in flight than the queue holds (Retry-After: 1)

The accepted request goes on to LitServe's /predict as JSON (category, base64 image, map flag). An image that
does not decode is found by the worker, which answers `{"error", "status": 400}` for that request alone (a
batch goes on); this gate turns such a body into its status code. `GET /health` answers JSON with the served
categories once the workers are ready (503 before).
"""

from __future__ import annotations

import base64
import json
import os
from typing import Optional
from urllib.parse import parse_qs, unquote

from ..errors import AnomCLIPError

PREDICT = "/predict"
IMAGE_FIELD_NAMES = ("image", "file")


class RequestProblem(AnomCLIPError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class ServeGate:
    """ASGI middleware; `catalog` is the JSON file the workers write once their categories are loaded."""

    def __init__(self, app, *, catalog: str, max_bytes: int, max_in_flight: int):
        self.app, self.catalog_path = app, catalog
        self.max_bytes, self.max_in_flight = max_bytes, max_in_flight
        self.in_flight = 0
        self._catalog: Optional[dict] = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"].rstrip("/") or "/"
        if path == "/health":
            return await self._health(scope, receive, send)
        if path == PREDICT or path.startswith(PREDICT + "/"):
            return await self._predict(scope, receive, send, path)
        return await self.app(scope, receive, send)

    # ------------------------------------------------------------------ routes
    async def _health(self, scope, receive, send):
        statuses = []

        async def capture(message):
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await self.app(dict(scope, path="/health", raw_path=b"/health"), receive, capture)
        ready = statuses and statuses[0] == 200 and self.catalog() is not None
        if not ready:
            return await respond(send, 503, {"status": "starting", "error": "the model workers are still loading"})
        return await respond(send, 200, {"status": "ok", **self.catalog(), "max_body_bytes": self.max_bytes,
                                         "max_in_flight": self.max_in_flight})

    async def _predict(self, scope, receive, send, path):
        if scope["method"] != "POST":
            return await respond(send, 405, {"error": f"{scope['method']} {path}: use POST with an image", "status": 405})
        if self.in_flight >= self.max_in_flight:
            return await respond(send, 503, {"error": f"server busy: {self.in_flight} requests in flight, the queue "
                                                      f"holds {self.max_in_flight}; retry shortly", "status": 503},
                                 extra_headers=[(b"retry-after", b"1")])
        self.in_flight += 1
        try:
            try:
                payload = await self._payload(scope, receive, path)
            except RequestProblem as problem:
                return await respond(send, problem.status, {"error": str(problem), "status": problem.status})
            await self._forward(scope, send, payload)
        finally:
            self.in_flight -= 1

    # ------------------------------------------------------------------ checks
    async def _payload(self, scope, receive, path) -> bytes:
        query = _query(scope)
        category = self._category(unquote(path[len(PREDICT) + 1:]) if path != PREDICT else query.get("category"))
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if not (content_type.startswith("image/") or content_type == "multipart/form-data"):
            raise RequestProblem(415, f"content type {content_type or '(none)'!r} is not accepted; send the image "
                                      "bytes with an image/* content type (image/png, image/jpeg, ...) or a "
                                      "multipart/form-data upload with an 'image' file field")
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise RequestProblem(413, f"body of {int(declared):,} bytes is over the limit of {self.max_bytes:,} bytes")
        body = await _read_body(receive, self.max_bytes)
        image = body if content_type.startswith("image/") else await _multipart_image(scope, body)
        if not image:
            raise RequestProblem(400, "empty image: the request carries no image bytes")
        want_map = query.get("map", "").lower() in ("1", "true", "yes", "png")
        return json.dumps({"category": category, "image": base64.b64encode(image).decode("ascii"),
                           "map": want_map}).encode()

    def _category(self, requested: Optional[str]) -> str:
        catalog = self.catalog()
        if catalog is None:
            raise RequestProblem(503, "the model workers are still loading; retry shortly")
        served = catalog["categories"]
        if not requested:
            if len(served) == 1:
                return served[0]
            raise RequestProblem(400, f"several categories are served ({', '.join(served)}); name one: "
                                      f"/predict/NAME or /predict?category=NAME")
        if requested not in served:
            raise RequestProblem(404, f"unknown category {requested!r}; served: {', '.join(served)}")
        return requested

    def catalog(self) -> Optional[dict]:
        """{"categories": [...], "thresholds": {...}} as the workers wrote it; None until they have."""
        if self._catalog is None and os.path.exists(self.catalog_path):
            with open(self.catalog_path, encoding="utf-8") as handle:
                self._catalog = json.load(handle)
        return self._catalog

    # ------------------------------------------------------------------ forwarding
    async def _forward(self, scope, send, payload: bytes):
        """LitServe's /predict with the JSON payload; a worker's per-request error body sets the status."""
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": payload, "more_body": False}

        start, chunks = {}, []

        async def collect(message):
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        inner = dict(scope, path=PREDICT, raw_path=PREDICT.encode(), query_string=b"", headers=headers)
        await self.app(inner, replay, collect)
        body = b"".join(chunks)
        status = start.get("status", 500)
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if isinstance(answer, dict) and isinstance(answer.get("status"), int) and "error" in answer:
            status = answer["status"]
        elif status >= 500 and not isinstance(answer, dict):
            answer = {"error": "internal error while scoring", "status": status}
        if isinstance(answer, dict) and "detail" in answer and "error" not in answer:
            answer = {"error": str(answer["detail"]), "status": status}  # LitServe's own errors (504, 500)
        await respond(send, status, answer if answer is not None else {"error": "empty answer", "status": status})


def _query(scope) -> dict:
    try:
        parsed = parse_qs(scope.get("query_string", b"").decode("utf-8"), strict_parsing=False)
    except UnicodeDecodeError as error:
        raise RequestProblem(400, f"query string is not UTF-8: {error}") from error
    return {key: values[-1] for key, values in parsed.items()}


async def _read_body(receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestProblem(400, "the client closed the connection before the body was complete")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestProblem(413, f"body is over the limit of {limit:,} bytes")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _multipart_image(scope, body: bytes) -> bytes:
    """The bytes of the upload's file field ('image' or 'file', else the first file)."""
    from starlette.requests import Request

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, replay).form(max_files=4, max_fields=16)
    except Exception as error:  # starlette raises its own errors for malformed multipart bodies
        raise RequestProblem(400, f"cannot read the multipart body: {error}") from error
    files = {key: value for key, value in form.multi_items() if hasattr(value, "read")}
    field = next((name for name in IMAGE_FIELD_NAMES if name in files), next(iter(files), None))
    if field is None:
        raise RequestProblem(400, "the multipart body has no file part; upload the image as a file field 'image'")
    return await files[field].read()


async def respond(send, status: int, payload: dict, extra_headers=()):
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *extra_headers]})
    await send({"type": "http.response.body", "body": body})
