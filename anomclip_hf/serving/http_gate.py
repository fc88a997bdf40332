"""The front door of `anomclip serve`: a plain ASGI middleware in front of LitServe's routes.

LitServe reads request bodies as JSON or forms and answers 500 for anything it did not expect; a line sends
raw image bytes. So every request is checked here first, in the HTTP process, before it reaches the batching
queue, and each problem gets its own status and a JSON `{"error": ..., "status": ...}` naming it:

    400  a multipart body without a file part, several categories served and none named, a query it cannot
         read, an image whose header the decoder refuses (format, size, a broken file)
    401  /predict without the API key (`Authorization: Bearer KEY`) when the server has one
    404  an unknown category (the body names the served ones)
    405  another method than POST on /predict (GET, HEAD and POST on /health)
    408  a body not complete within `body_timeout` seconds of the headers
    413  a body over the size limit (Content-Length, or counted while reading), an image that alone decodes to
         more than the decoded budget
    415  a content type other than image/* or multipart/form-data
    429  more requests in progress from one client address than `max_per_client`
    503  (Retry-After) the queue is full, the bytes buffered or the decoded pixels in flight would pass their
         budget, no model worker is alive (one is being restarted), or the worker holding the request died

Budgets (GateLimits) are per server: bytes of bodies held in this process, decoded bytes of the images in
flight (from their headers, before any pixel is decoded), requests queued for the workers. The accepted request
goes on to LitServe's /predict as JSON (category, base64 image, map flag); the worker decodes each request
before it joins a batch and answers `{"error", "status"}` for that request alone. Every request leaves one
access-log line (client, method, path, status, milliseconds, bytes in and out; never the body).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import io
import json
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Optional
from urllib.parse import parse_qs, unquote

from ..errors import AnomCLIPError
from .metrics import ServiceMetrics

PREDICT = "/predict"
HEALTH = "/health"
METRICS = "/metrics"
IMAGE_FIELD_NAMES = ("image", "file")
ACCESS_LOG = "anomclip.serve.access"
WORKER_POLL_SECONDS = 0.25
MB = 1024 * 1024
BODY_NAME = "<image bytes>"  # how errors name a request's image, as the decoder does


@dataclass(frozen=True)
class GateLimits:
    """What one server lets its clients hold (see the module docstring for the statuses)."""

    max_bytes: int = 20 * MB  # one body
    max_in_flight: int = 64  # requests queued for, or being scored by, the workers
    max_buffered_bytes: int = 256 * MB  # bodies held in this process, all requests together
    max_decoded_bytes: int = 600 * MB  # decoded images in flight (2 of the largest the decoder accepts)
    max_per_client: int = 16  # requests in progress (reading, queued, scored) from one client address
    body_timeout: float = 30.0  # seconds from the headers to the last body byte


class RequestProblem(AnomCLIPError):
    def __init__(self, status: int, message: str, headers=()):
        super().__init__(message)
        self.status, self.headers = status, list(headers)


def busy(message: str) -> RequestProblem:
    return RequestProblem(503, message, [(b"retry-after", b"1")])


class ServeGate:
    """ASGI middleware; `catalog` is the JSON file the workers write once their categories are loaded,
    `workers` the folder where each worker leaves a file named by its PID."""

    def __init__(self, app, *, catalog: str, limits: GateLimits = GateLimits(), api_key: Optional[str] = None,
                 workers: Optional[str] = None, routes: Optional[dict] = None, max_bytes: Optional[int] = None,
                 max_in_flight: Optional[int] = None):
        """routes: more endpoints, {path: ASGI app}, answered by the gate (behind the API key, in the access
        log) instead of LitServe, e.g. a /metrics endpoint."""
        if max_bytes is not None or max_in_flight is not None:
            limits = GateLimits(**{**limits.__dict__, **({} if max_bytes is None else {"max_bytes": max_bytes}),
                                   **({} if max_in_flight is None else {"max_in_flight": max_in_flight})})
        self.app, self.catalog_path, self.limits = app, catalog, limits
        self.api_key = api_key.encode() if api_key else None
        self.workers = WorkerWatch(workers) if workers else None
        self.in_flight = 0
        self.buffered_bytes = 0
        self.decoded_bytes = 0
        self.per_client: Counter = Counter()
        self._catalog: Optional[dict] = None
        self.access_log = logging.getLogger(ACCESS_LOG)
        self.metrics = ServiceMetrics()  # the same counters `anomclip watch` exposes
        self.routes = {METRICS: self._metrics, **(routes or {})}

    @property
    def max_bytes(self) -> int:
        return self.limits.max_bytes

    @property
    def max_in_flight(self) -> int:
        return self.limits.max_in_flight

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, counts = time.monotonic(), {"status": 0, "out": 0, "in": 0}

        async def counting_receive():
            message = await receive()
            counts["in"] += len(message.get("body", b""))
            return message

        async def counting_send(message):
            if message["type"] == "http.response.start":
                counts["status"] = message["status"]
            elif message["type"] == "http.response.body":
                counts["out"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.route(scope, counting_receive, counting_send)
        finally:
            self.log_access(scope, counts, time.monotonic() - started)

    async def route(self, scope, receive, send):
        path = scope["path"].rstrip("/") or "/"
        if path == HEALTH:
            return await self._health(scope, send)
        if self.api_key is not None and not self.authorized(scope):
            return await respond(send, 401, {"error": "missing or wrong API key: send 'Authorization: Bearer KEY'",
                                             "status": 401}, extra_headers=[(b"www-authenticate", b"Bearer")])
        if path == PREDICT or path.startswith(PREDICT + "/"):
            return await self._predict(scope, receive, send, path)
        if path in self.routes:
            return await self.routes[path](scope, receive, send)
        return await self.app(scope, receive, send)

    def authorized(self, scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        # compare_digest: the time taken does not tell how much of a guessed key was right
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key)

    def log_access(self, scope, counts: dict, seconds: float) -> None:
        client = (scope.get("client") or ("-",))[0]
        self.access_log.info("%s %s %s %d %.1fms in=%d out=%d", client, scope.get("method", "-"),
                             scope.get("path", "-"), counts["status"], seconds * 1000, counts["in"], counts["out"])

    # ------------------------------------------------------------------ routes
    async def _health(self, scope, send):
        if scope["method"] not in ("GET", "HEAD", "POST"):
            return await respond(send, 405, {"error": f"{scope['method']} /health: use GET", "status": 405})
        head = scope["method"] == "HEAD"
        if self.catalog() is None or not self.workers_alive():
            return await respond(send, 503, {"status": "starting", "error": "the model workers are loading"},
                                 head=head, extra_headers=[(b"retry-after", b"1")])
        return await respond(send, 200, {"status": "ok", **self.catalog(), "max_body_bytes": self.max_bytes,
                                         "max_in_flight": self.max_in_flight}, head=head)

    async def _metrics(self, scope, receive, send):
        """Prometheus' text exposition of the gate's counters (behind the API key when one is set)."""
        body = self.metrics.exposition()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", self.metrics.content_type.encode()),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    def workers_alive(self) -> bool:
        return self.workers is None or self.workers.alive()

    async def _predict(self, scope, receive, send, path):
        if scope["method"] != "POST":
            return await respond(send, 405, {"error": f"{scope['method']} {path}: use POST with an image", "status": 405})
        client = (scope.get("client") or ("-",))[0]
        if self.per_client[client] >= self.limits.max_per_client:
            return await respond(send, 429, {"error": f"{self.per_client[client]} requests from {client} are in "
                                             f"progress, at most {self.limits.max_per_client}; retry when one is "
                                             "answered", "status": 429}, extra_headers=[(b"retry-after", b"1")])
        self.per_client[client] += 1
        self.metrics.inputs.labels(source="http").inc()
        held, started = Holdings(), time.monotonic()
        try:
            payload = await self._payload(scope, receive, path, held)
            self.metrics.queue_depth.labels(source="http").set(self.in_flight)
            answer = await self._forward(scope, send, payload, held)
            self.metrics.verdict(answer.get("category", ""), answer.get("decision", ""), time.monotonic() - started)
        except RequestProblem as problem:
            self.metrics.errors.labels(stage="request" if problem.status < 500 else "service").inc()
            await respond(send, problem.status, {"error": str(problem), "status": problem.status},
                          extra_headers=problem.headers)
        finally:
            self.release(held)
            self.metrics.queue_depth.labels(source="http").set(self.in_flight)
            self.per_client[client] -= 1
            if not self.per_client[client]:
                del self.per_client[client]

    def release(self, held: "Holdings") -> None:
        self.buffered_bytes -= held.buffered
        self.decoded_bytes -= held.decoded
        self.in_flight -= held.queued
        held.buffered = held.decoded = held.queued = 0

    # ------------------------------------------------------------------ checks
    async def _payload(self, scope, receive, path, held: "Holdings") -> bytes:
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
        if declared.isdigit():
            self.reserve_buffer(held, int(declared))  # refused before a byte is read when the budget is spent
        body = await self._read_body(receive, held)
        image = body if content_type.startswith("image/") else await _multipart_image(scope, body)
        if not image:
            raise RequestProblem(400, "empty image: the request carries no image bytes")
        self.reserve_decoded(held, await asyncio.to_thread(decoded_size, image))
        if self.in_flight >= self.max_in_flight:
            raise busy(f"server busy: {self.in_flight} requests in flight, the queue holds {self.max_in_flight}; "
                       "retry shortly")
        self.in_flight += 1
        held.queued = 1
        want_map = query.get("map", "").lower() in ("1", "true", "yes", "png")
        return json.dumps({"category": category, "image": base64.b64encode(image).decode("ascii"),
                           "map": want_map}).encode()

    def reserve_buffer(self, held: "Holdings", size: int) -> None:
        if self.buffered_bytes + size > self.limits.max_buffered_bytes:
            raise busy(f"server busy: {self.buffered_bytes:,} bytes of request bodies are held, the budget is "
                       f"{self.limits.max_buffered_bytes:,}; retry shortly")
        self.buffered_bytes += size
        held.buffered += size

    def reserve_decoded(self, held: "Holdings", size: int) -> None:
        budget = self.limits.max_decoded_bytes
        if size > budget:
            raise RequestProblem(413, f"the image decodes to {size:,} bytes, more than the {budget:,} this server "
                                      "decodes at once; send a smaller image")
        if self.decoded_bytes + size > budget:
            raise busy(f"server busy: images of {self.decoded_bytes:,} decoded bytes are in flight, the budget is "
                       f"{budget:,}; retry shortly")
        self.decoded_bytes += size
        held.decoded += size

    async def _read_body(self, receive, held: "Holdings") -> bytes:
        """The body, within `body_timeout` seconds in all (a client sending a byte now and then is cut off as
        one sending nothing) and the byte limits (one body, all bodies held)."""
        chunks, size = [], 0
        deadline = time.monotonic() + self.limits.body_timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
            except asyncio.TimeoutError:
                raise RequestProblem(408, f"the body was not complete within {self.limits.body_timeout:g} s "
                                          f"({size:,} bytes received)", [(b"connection", b"close")]) from None
            if message["type"] == "http.disconnect":
                raise RequestProblem(400, "the client closed the connection before the body was complete")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise RequestProblem(413, f"body is over the limit of {self.max_bytes:,} bytes")
            if size > held.buffered:  # no Content-Length (chunked), or more than it said
                self.reserve_buffer(held, size - held.buffered)
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    def _category(self, requested: Optional[str]) -> str:
        catalog = self.catalog()
        if catalog is None or not self.workers_alive():
            raise busy("no model worker is ready (starting, or restarting after one stopped); retry shortly")
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
    async def _forward(self, scope, send, payload: bytes, held: "Holdings") -> dict:
        """LitServe's /predict with the JSON payload; a worker's per-request error body sets the status, and an
        error answer raises RequestProblem after it is sent (so it is counted once). When a worker dies while
        the request is queued or scored, the request is answered 503 at once. Returns the answer sent."""
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
        scoring = asyncio.ensure_future(self.app(inner, replay, collect))
        if self.workers is not None:
            deaths = self.workers.deaths
            lost = asyncio.ensure_future(self.workers.death_after(deaths))
            await asyncio.wait({scoring, lost}, return_when=asyncio.FIRST_COMPLETED)
            lost.cancel()
            if not scoring.done():
                scoring.cancel()
                raise busy("the model worker stopped while this request was queued or scored (it is being "
                           "restarted); retry shortly")
        await scoring
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
        answer = answer if answer is not None else {"error": "empty answer", "status": status}
        await respond(send, status, answer)
        if status >= 400:
            self.metrics.errors.labels(stage="request" if status < 500 else "scoring").inc()
        return answer if status < 400 else {"category": answer.get("category", ""), "decision": "error"}


@dataclass
class Holdings:
    """What one request holds of the gate's budgets (released when it is answered)."""

    buffered: int = 0
    decoded: int = 0
    queued: int = 0


class WorkerWatch:
    """The model workers' liveness, from the PID files they leave in `folder`: a worker that dies (killed by
    the OOM killer, a crash) is noticed within WORKER_POLL_SECONDS and counted in `deaths`."""

    def __init__(self, folder: str):
        self.folder, self.deaths = folder, 0
        self.known: set = set()
        self._checked = 0.0

    def alive(self) -> bool:
        self.poll()
        return bool(self.known)

    def poll(self) -> None:
        now = time.monotonic()
        if now - self._checked < WORKER_POLL_SECONDS / 2:
            return
        self._checked = now
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            names = []
        current = {int(name.split(".")[0]) for name in names if name.split(".")[0].isdigit()}
        for pid in sorted(current):
            if not process_running(pid):
                self.deaths += 1  # counted once: its file goes now
                current.discard(pid)
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self.folder, f"{pid}.json"))
        self.known = current

    async def death_after(self, deaths: int) -> None:
        """Returns once a worker has died after `deaths` deaths were counted."""
        while True:
            self.poll()
            if self.deaths > deaths:
                return
            await asyncio.sleep(WORKER_POLL_SECONDS)


def process_running(pid: int) -> bool:
    """False for a process that is gone or a zombie (dead, not yet reaped by its parent)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    except OSError:  # no /proc (macOS): a signal 0 tells whether the PID exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def decoded_size(image: bytes) -> int:
    """Bytes the image takes once decoded (pixels x bytes per pixel, at least the 3 of its RGB copy), from its
    header only; RequestProblem 400 when the decoder would refuse the file (format, broken header, over the
    package's decoding limits)."""
    from PIL import Image

    from ..io.image_io import MAX_IMAGE_PIXELS, check_pixel_count

    try:
        with Image.open(io.BytesIO(image), formats=DECODED_FORMATS) as probe:
            width, height = probe.size
            check_pixel_count(probe.size, BODY_NAME)
            size = width * height * max(_bytes_per_pixel(probe.mode), 3)
            mode = probe.mode
    except Exception as error:  # noqa: BLE001 - a header Pillow cannot read is this request's problem alone
        raise RequestProblem(400, f"cannot read image {BODY_NAME}: {type(error).__name__}: {error}") from None
    if size > 3 * MAX_IMAGE_PIXELS:  # the decoder's budget: the largest RGB image it decodes
        raise RequestProblem(400, f"the image is {width}x{height} pixels in mode {mode}: {size:,} bytes decoded, "
                                  f"more than the {3 * MAX_IMAGE_PIXELS:,} this package decodes; send it smaller "
                                  "or as 8-bit")
    return size


# What the decoder accepts (formats Pillow decodes in-process; none runs an external program).
# What the decoder accepts (formats Pillow decodes in-process; none runs an external program).
DECODED_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")


def _bytes_per_pixel(mode: str) -> int:
    import numpy as np
    from PIL import ImageMode

    described = ImageMode.getmode(mode)
    return len(described.bands) * np.dtype(described.typestr).itemsize


def configure_access_log(stream=None) -> None:
    """One line per request on stderr (the HTTP processes inherit this)."""
    logger = logging.getLogger(ACCESS_LOG)
    if not logger.handlers:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s access %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _query(scope) -> dict:
    try:
        parsed = parse_qs(scope.get("query_string", b"").decode("utf-8"), strict_parsing=False)
    except UnicodeDecodeError as error:
        raise RequestProblem(400, f"query string is not UTF-8: {error}") from error
    return {key: values[-1] for key, values in parsed.items()}


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


async def respond(send, status: int, payload: dict, extra_headers=(), head: bool = False):
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *extra_headers]})
    await send({"type": "http.response.body", "body": b"" if head else body})
