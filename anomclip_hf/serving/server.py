"""`anomclip serve`: an HTTP endpoint for a line, on LitServe (extra `[serve]`), with dynamic batching.

LitServe runs the model in worker processes fed by a queue and gathers up to `max_batch_size` requests that
arrive within `batch_timeout` seconds into one batch (dynamic batching), so concurrent clients share one forward
pass. One worker loads the base once and every served category into it (`Predictor` per category, one model),
so a batch may mix categories: it is scored per category. The HTTP side is `http_gate.ServeGate` (size limit,
content types, categories, a bounded number of requests in flight).

    POST /predict            raw image bytes (Content-Type image/*) or multipart/form-data (field 'image')
    POST /predict/NAME       the same for category NAME (or ?category=NAME); ?map=1 adds a PNG anomaly map
    GET  /health             {"status": "ok", "categories": [...], "thresholds": {...}, ...}

Answer: {"category", "score", "normalized_score", "decision", "threshold"[, "anomaly_map_png" (base64 PNG,
8-bit, the map's 0..1 range as 0..255)][, "note"]}.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import tempfile
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..io.atomic_io import write_json
from .extras import import_extra
from .http_gate import ServeGate

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
    catalog: str = ""  # where the worker writes the loaded names and thresholds for the gate

    def load(self, device: str) -> dict:
        """{category name: Predictor}, every category in one model loaded once."""
        from ..inference.predictor import Predictor
        from ..model.decisions import resolve_threshold
        from ..model.modeling_anomclip import AnomCLIPModel

        model = AnomCLIPModel.from_base(self.base).to(device)
        predictors = {}
        for source in self.categories:
            state = model.load_category(source, revision=self.revision, activate=False)
            threshold = resolve_threshold(state.metadata.get("decision_threshold"), self.threshold, self.sensitivity)
            predictors[state.name] = Predictor.from_model(model, state.name, threshold=threshold,
                                                          precision=self.precision, output_size=self.output_size)
        return predictors


def _map_png(anomaly_map: np.ndarray) -> str:
    from PIL import Image

    pixels = (np.clip(np.asarray(anomaly_map, dtype=np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def score_requests(predictors: dict, requests: list) -> list:
    """One answer per request (dicts of category, base64 image, map flag), in order; a request that fails
    (unknown category, undecodable image) gets {"error", "status"} and the others are still scored."""
    answers: list = [None] * len(requests)
    by_category: dict = {}
    for position, request in enumerate(requests):
        name = request.get("category")
        if name not in predictors:
            answers[position] = {"error": f"unknown category {name!r}; served: {', '.join(predictors)}", "status": 404}
            continue
        try:
            image = base64.b64decode(request.get("image", ""), validate=True)
        except (ValueError, TypeError) as error:
            answers[position] = {"error": f"image is not base64: {error}", "status": 400}
            continue
        by_category.setdefault(name, []).append((position, image, bool(request.get("map"))))
    for name, items in by_category.items():
        predictor = predictors[name]
        wants_maps = any(want for _, _, want in items)
        for (position, _, want), result in zip(items, predictor.predict([image for _, image, _ in items],
                                                                        maps=wants_maps)):
            if result.error:
                answers[position] = {"error": result.error, "status": 400}
                continue
            answer = {"category": name, "score": result.score, "normalized_score": result.normalized_score,
                      "decision": result.decision or None, "threshold": result.threshold}
            if predictor.note:
                answer["note"] = predictor.note
            if want:
                answer["anomaly_map_png"] = _map_png(result.anomaly_map)
            answers[position] = answer
    return answers


class AnomalyDetectionAPI(litserve.LitAPI):
    """LitServe's model side: setup loads the predictors, predict scores a (dynamic) batch of requests."""

    def __init__(self, spec: ServeSpec, max_batch_size: int, batch_timeout: float):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path="/predict")
        self.serve_spec = spec  # not `spec`: LitAPI uses that name for its API specs

    def setup(self, device):
        self.predictors = self.serve_spec.load(str(device))
        write_json(self.serve_spec.catalog, {"categories": list(self.predictors),
                                       "thresholds": {name: p.threshold for name, p in self.predictors.items()}})

    def decode_request(self, request):
        return dict(request)

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
    extra: dict = field(default_factory=dict)


def build_server(spec: ServeSpec, options: ServerOptions):
    """The LitServer (not started): the API behind the gate; a worker writes the catalog once loaded."""
    if not spec.catalog:
        raise ValueError("ServeSpec.catalog: a file path for the workers' category list is needed")
    accelerator = "cpu" if options.device == "cpu" else ("cuda" if options.device.startswith("cuda") else "auto")
    gate = (ServeGate, {"catalog": spec.catalog, "max_bytes": int(options.max_mb * 1024 * 1024),
                        "max_in_flight": options.max_queue})
    api = AnomalyDetectionAPI(spec, options.max_batch_size, options.batch_timeout)
    return litserve.LitServer(api, accelerator=accelerator, devices=1, workers_per_device=options.workers,
                              timeout=options.timeout, middlewares=[gate], disable_openapi_url=True)


def serve(base: str, categories, options: Optional[ServerOptions] = None, **spec_options) -> None:
    """Run the server until SIGINT/SIGTERM (both shut the workers down)."""
    options = options or ServerOptions()
    if not categories:
        raise ValueError("serve needs at least one --category")
    with tempfile.TemporaryDirectory(prefix="anomclip-serve-") as work:
        spec = ServeSpec(base=os.fspath(base), categories=tuple(map(os.fspath, categories)),
                         catalog=os.path.join(work, "catalog.json"), **spec_options)
        server = build_server(spec, options)
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM: the same clean stop as Ctrl+C
        server.run(host=options.host, port=options.port, num_api_servers=1, generate_client_file=False,
                   log_level="warning")
