"""`anomclip serve`: an HTTP endpoint for a line, on LitServe (extra `[serve]`), with dynamic batching.

LitServe runs the model in worker processes fed by a queue and gathers up to `max_batch_size` requests that
arrive within `batch_timeout` seconds into one batch (dynamic batching), so concurrent clients share one forward
pass. One worker loads the base once and every served category into it (`Predictor` per category, one model),
so a batch may mix categories: it is scored per category. Each request is decoded on its own (LitAPI.decode_request)
before it joins a batch, and a request that fails at any stage gets its own error: never its batch's. The HTTP side
is `http_gate.ServeGate` (API key, client budgets, content types, categories, a bounded queue, the access log),
below it uvicorn with `connections.header_deadline_protocol`. LitServe restarts a worker that dies; the gate
answers the requests it held with 503.

    POST /predict            raw image bytes (Content-Type image/*) or multipart/form-data (field 'image')
    POST /predict/NAME       the same for category NAME (or ?category=NAME); ?map=1 adds a PNG anomaly map
    GET  /health             {"status": "ok", "categories": [...], "thresholds": {...}, ...} (also HEAD, POST)

Answer: {"category", "score", "normalized_score", "decision", "threshold"[, "anomaly_map_png" (base64 PNG,
8-bit, the map's 0..1 range as 0..255)][, "note"]}.
"""

from __future__ import annotations

import base64
import dataclasses
import gc
import io
import os
import tempfile
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..errors import ArgumentError, CategoryError, ImageReadError
from ..io.atomic_io import write_json
from .extras import import_extra
from .connections import (
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DRAIN_SECONDS,
    KEEP_ALIVE_SECONDS,
    MAX_HEADER_BYTES,
    header_deadline_protocol,
    stop_on_sigterm,
)
from .http_gate import BODY_NAME, GateLimits, ServeGate, configure_access_log

litserve = import_extra("litserve", "serve")  # at import: workers unpickle the API class by its module path

DEFAULT_MAX_MB = 20.0
DEFAULT_MAX_QUEUE = 64


@dataclass(frozen=True)
class ServeSpec:
    """What a worker loads: one base, several categories (adapter folders or Hub repo ids)."""

    base: str
    categories: tuple
    revision: Optional[str] = None
    precision: str = "fp32"
    threshold: Optional[float] = None
    output_size: Optional[int] = None
    sensitivity: Optional[float] = None  # over each category's stored threshold (model.decisions), not with threshold
    memory_backbone: Optional[str] = None  # a DINOv2 memory for a base saved without one
    catalog: str = ""  # where the worker writes the loaded names and thresholds for the gate
    tile: Optional[object] = None  # --tile / --tile-overlap: may only repeat what each adapter's fit used
    tile_overlap: Optional[object] = None

    def load(self, device: str) -> dict:
        """{category name: Predictor}, every category in one model loaded once; ValueError naming both sources
        when two of them carry the same category name (one would silently shadow the other)."""
        from ..inference.predictor import Predictor
        from ..model.decisions import resolve_threshold
        from ..model.modeling_anomclip import AnomCLIPModel

        extra = {} if self.memory_backbone is None else {"memory_backbone": self.memory_backbone}
        model = AnomCLIPModel.from_base(self.base, **extra).to(device)
        predictors, sources = {}, {}
        for source in self.categories:
            state = model.load_category(source, revision=self.revision, activate=False)
            if state.name in sources:
                raise CategoryError(f"--category {sources[state.name]} and --category {source} are both category "
                                 f"{state.name!r}; serve each name once (rename one when fitting it)")
            sources[state.name] = source
            threshold = resolve_threshold(state.metadata.get("decision_threshold"), self.threshold, self.sensitivity)
            predictors[state.name] = Predictor.from_model(model, state.name, threshold=threshold,
                                                          precision=self.precision, output_size=self.output_size,
                                                          tile=self.tile, tile_overlap=self.tile_overlap)
        return predictors


def _map_png(anomaly_map: np.ndarray) -> str:
    from PIL import Image

    pixels = (np.clip(np.asarray(anomaly_map, dtype=np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass
class DecodedRequest:
    """One request after its own decoding, before it joins a batch: the image, or the error that answers it."""

    category: Optional[str]
    image: object = None  # an RGB PIL image
    want_map: bool = False
    error: Optional[str] = None
    status: int = 200


def decode_request(request) -> DecodedRequest:
    """The request's JSON (category, base64 image, map flag) decoded and checked on its own; whatever fails here
    (a body the gate did not send, bad base64, an image the decoder refuses) fails this request alone."""
    if not isinstance(request, dict):
        return DecodedRequest(None, error=f"expected a JSON object, got {type(request).__name__}", status=400)
    category = request.get("category")
    try:
        data = base64.b64decode(request.get("image") or "", validate=True)
    except (ValueError, TypeError) as error:
        return DecodedRequest(category, error=f"image is not base64: {error}", status=400)
    try:
        image = decode_image_bytes(data)
    except ImageReadError as error:
        return DecodedRequest(category, error=str(error), status=400)
    except Exception as error:  # noqa: BLE001 - any decoder failure belongs to this request, not to its batch
        return DecodedRequest(category, error=f"cannot read image {BODY_NAME}: {type(error).__name__}: {error}",
                              status=400)
    return DecodedRequest(category, image=image, want_map=bool(request.get("map")))


def decode_image_bytes(data: bytes):
    """The package's decoder for encoded bytes: an RGB PIL image, or ImageReadError naming the request."""
    from ..inference.inputs import image_from_bytes

    return image_from_bytes(data)


def score_requests(predictors: dict, requests: list) -> list:
    """One answer per decoded request, in order. A request that fails (unknown category, undecodable image, a
    failure while scoring it) gets {"error", "status"}; the others are scored as they would be alone."""
    answers: list = [None] * len(requests)
    by_category: dict = {}
    for position, request in enumerate(requests):
        if not isinstance(request, DecodedRequest):  # LitServe skipped decode_request (never expected)
            request = decode_request(request)
        if request.error is not None:
            answers[position] = {"error": request.error, "status": request.status}
        elif request.category not in predictors:
            answers[position] = {"error": f"unknown category {request.category!r}; served: "
                                          f"{', '.join(predictors)}", "status": 404}
        else:
            by_category.setdefault(request.category, []).append((position, request))
    for name, items in by_category.items():
        predictor = predictors[name]
        try:
            results = predictor.predict([request.image for _, request in items],
                                        maps=any(request.want_map for _, request in items))
        except Exception:  # noqa: BLE001 - one input broke the batch: score each alone, so only it fails
            results = [_score_alone(predictor, request) for _, request in items]
        for (position, request), result in zip(items, results):
            answers[position] = _answer(predictor, name, request, result)
    return answers


def _score_alone(predictor, request: DecodedRequest):
    try:
        return predictor.predict([request.image], maps=request.want_map)[0]
    except Exception as error:  # noqa: BLE001
        return error


def _answer(predictor, name: str, request: DecodedRequest, result) -> dict:
    if isinstance(result, Exception):
        return {"error": f"cannot score this image: {type(result).__name__}: {result}", "status": 422}
    if result.error:
        return {"error": result.error, "status": 400}
    answer = {"category": name, "score": result.score, "normalized_score": result.normalized_score,
              "decision": result.decision or None, "threshold": result.threshold}
    if predictor.note:
        answer["note"] = predictor.note
    if request.want_map:
        answer["anomaly_map_png"] = _map_png(result.anomaly_map)
    return answer


class AnomalyDetectionAPI(litserve.LitAPI):
    """LitServe's model side: setup loads the predictors, decode_request decodes each request on its own (before
    batching), predict scores a (dynamic) batch of them."""

    def __init__(self, spec: ServeSpec, max_batch_size: int, batch_timeout: float):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path="/predict")
        self.serve_spec = spec  # not `spec`: LitAPI uses that name for its API specs

    def setup(self, device):
        self.predictors = self.serve_spec.load(str(device))
        catalog = {"categories": list(self.predictors),
                   "thresholds": {name: p.threshold for name, p in self.predictors.items()}}
        write_json(self.serve_spec.catalog, catalog)
        register_worker(self.serve_spec.catalog)  # the gate watches this process: its death fails its requests

    def decode_request(self, request):
        return decode_request(request)

    def batch(self, inputs):
        return list(inputs)

    def predict(self, x):
        if isinstance(x, list):  # a batch
            return score_requests(self.predictors, x)
        return score_requests(self.predictors, [x])[0]

    def unbatch(self, output):
        return list(output)

    def encode_response(self, output):
        return output


def register_worker(catalog: str) -> None:
    """A file named by this worker's PID next to the catalog: the gate knows which workers to watch."""
    folder = workers_folder(catalog)
    os.makedirs(folder, exist_ok=True)
    write_json(os.path.join(folder, f"{os.getpid()}.json"), {"pid": os.getpid()})


def workers_folder(catalog: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(catalog)), "workers")


@dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "cpu"
    max_batch_size: int = 8
    batch_timeout: float = 0.01
    max_mb: float = DEFAULT_MAX_MB
    max_queue: int = DEFAULT_MAX_QUEUE
    workers: int = 1
    timeout: float = 60.0
    limits: GateLimits = field(default_factory=GateLimits)
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    api_key: Optional[str] = field(default=None, repr=False)
    extra: dict = field(default_factory=dict)


def build_server(spec: ServeSpec, options: ServerOptions):
    """The LitServer (not started): the API behind the gate; a worker writes the catalog once loaded. LitServe
    restarts a worker that dies (restart_workers); the gate answers the requests it held with 503."""
    if not spec.catalog:
        raise ArgumentError("ServeSpec.catalog: a file path for the workers' category list is needed")
    accelerator = "cpu" if options.device == "cpu" else ("cuda" if options.device.startswith("cuda") else "auto")
    limits = dataclasses.replace(options.limits, max_bytes=int(options.max_mb * 1024 * 1024),
                                 max_in_flight=options.max_queue)
    gate = (ServeGate, {"catalog": spec.catalog, "limits": limits, "api_key": options.api_key,
                        "workers": workers_folder(spec.catalog)})
    api = AnomalyDetectionAPI(spec, options.max_batch_size, options.batch_timeout)
    server = litserve.LitServer(api, accelerator=accelerator, devices=1, workers_per_device=options.workers,
                                timeout=options.timeout, middlewares=[gate], disable_openapi_url=True,
                                restart_workers=True)
    server.uvicorn_graceful_timeout = DRAIN_SECONDS  # uvicorn's timeout_graceful_shutdown: how long a stop drains
    return server


def uvicorn_settings(options: ServerOptions) -> dict:
    """uvicorn's own connection limits: h11 with a header deadline, idle keep-alive, header size, connections."""
    return {"http": header_deadline_protocol(options.header_timeout), "timeout_keep_alive": KEEP_ALIVE_SECONDS,
            "h11_max_incomplete_event_size": MAX_HEADER_BYTES, "limit_concurrency": options.max_connections,
            "access_log": False}


def serve(base: str, categories, options: Optional[ServerOptions] = None, **spec_options) -> None:
    """Load every category once here (so a bad one is a one-line error before anything listens), then run the
    server until SIGINT/SIGTERM: both drain the requests in flight and stop the workers."""
    options = options or ServerOptions()
    if not categories:
        raise ArgumentError("serve needs at least one --category")
    with tempfile.TemporaryDirectory(prefix="anomclip-serve-") as work:
        spec = ServeSpec(base=os.fspath(base), categories=tuple(map(os.fspath, categories)),
                         catalog=os.path.join(work, "catalog.json"), **spec_options)
        spec.load("cpu")  # the preflight: what the worker will load, with its errors, before the port opens
        gc.collect()
        server = build_server(spec, options)
        configure_access_log()
        with stop_on_sigterm():
            server.run(host=options.host, port=options.port, num_api_servers=1, generate_client_file=False,
                       log_level="warning", **uvicorn_settings(options))
