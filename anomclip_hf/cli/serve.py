"""`anomclip serve`: an HTTP endpoint with dynamic batching for one base and several categories (LitServe)."""

from __future__ import annotations

import argparse
import os

from ..errors import ArgumentError
from ..flags.numeric import (
    MAX_OUTPUT_SIZE,
    int_range,
    nonnegative_float,
    positive_int,
)
from ..flags.precision import add_precision_argument
from ._common import add_command, add_decision_arguments, add_memory_backbone_argument, add_tiling_arguments, resolve_device

API_KEY_ENV = "ANOMCLIP_API_KEY"
MAX_BODY_MB = 1024.0
HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # what LitServe binds


def add_parser(commands) -> None:
    serve = add_command(
        commands, "serve", "an HTTP endpoint for a line: POST an image, get score and decision (dynamic batching)",
        "anomclip serve --base anomclip_demo/base --category runs/fit/adapter --port 8000",
        "anomclip serve --base B --category runs/bottle/adapter --category runs/screw/adapter --max-batch-size 16",
        description="Serve categories of one base over HTTP (LitServe; needs the serve extra: pip install -e\n"
                    "\".[serve]\"). POST /predict (raw image bytes with an image/* content type, or multipart\n"
                    "field 'image'), /predict/NAME or ?category=NAME when several are served; ?map=1 adds a PNG\n"
                    "anomaly map. GET /health. Listens on 127.0.0.1 only unless --host says otherwise. E.g.\n"
                    "curl -s -H 'Content-Type: image/png' --data-binary @part.png http://127.0.0.1:8000/predict/widget")
    serve.add_argument("--base", required=True, help="the CLIP or AnomCLIP base the categories were trained on")
    serve.add_argument("--category", required=True, action="append",
                       help="category adapter folder or Hub repo id; repeat for several")
    serve.add_argument("--revision", default=None, help="Hub branch, tag or commit of the categories")
    serve.add_argument("--host", default="127.0.0.1", choices=HOSTS,
                       help="address to listen on (default: %(default)s, this machine only)")
    serve.add_argument("--port", type=int_range(1024, 65535), default=8000, help="(default: %(default)s)")
    add_decision_arguments(serve, "each category")
    serve.add_argument("--output-size", type=int_range(1, MAX_OUTPUT_SIZE), default=None,
                       help="anomaly-map size of ?map=1 (default: model input)")
    serve.add_argument("--max-batch-size", type=positive_int, default=8,
                       help="requests scored together (1: no batching) (default: %(default)s)")
    serve.add_argument("--batch-timeout", type=nonnegative_float, default=0.01,
                       help="seconds a batch waits for more requests (default: %(default)s)")
    serve.add_argument("--max-queue", type=positive_int, default=64,
                       help="requests in flight before new ones get 503 (default: %(default)s)")
    serve.add_argument("--max-mb", type=bounded_float(0.001, MAX_BODY_MB), default=20.0,
                       help=f"request body limit in MB, at most {MAX_BODY_MB:g} (default: 20)")
    serve.add_argument("--workers", type=positive_int, default=1, help="model worker processes (default: 1)")
    serve.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: a GPU if there is one)")
    add_memory_backbone_argument(serve)
    limits = serve.add_argument_group("client limits (see docs/guides/serve.md)")
    limits.add_argument("--api-key", default=None,
                        help=f"require 'Authorization: Bearer KEY' on /predict (/health stays open); default: "
                             f"the {API_KEY_ENV} environment variable, unset: no key")
    limits.add_argument("--header-timeout", type=bounded_float(0.1, 3600), default=10.0,
                        help="seconds a client has to send a request's headers (default: %(default)s)")
    limits.add_argument("--body-timeout", type=bounded_float(0.1, 3600), default=30.0,
                        help="seconds a client has to send a request's body (default: %(default)s)")
    limits.add_argument("--max-per-client", type=positive_int, default=16,
                        help="requests in progress from one client address before 429 (default: %(default)s)")
    limits.add_argument("--max-buffer-mb", type=bounded_float(1, 1024 * 1024), default=256.0,
                        help="request bodies held in memory, all clients together, before 503 (default: 256)")
    limits.add_argument("--max-decoded-mb", type=bounded_float(1, 1024 * 1024), default=600.0,
                        help="decoded images in flight, all clients together, before 503 (default: 600, two "
                             "100-megapixel RGB images)")
    limits.add_argument("--max-connections", type=positive_int, default=512,
                        help="open connections before uvicorn answers 503 (default: %(default)s)")
    add_precision_argument(serve)
    add_tiling_arguments(serve)
    serve.set_defaults(func=run)


def bounded_float(minimum: float, maximum: float):
    """A number in minimum..maximum (argparse type)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number from {minimum:g} to {maximum:g}, got {text!r}") from None
        if not (minimum <= value <= maximum):  # also refuses nan and inf
            raise argparse.ArgumentTypeError(f"expected a number from {minimum:g} to {maximum:g}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def check_category_source(value: str) -> None:
    """A --category that can only be a path must be an existing folder (a Hub id is checked when loaded)."""
    from ..hub.validation import looks_like_local_path

    if os.path.exists(value) or looks_like_local_path(value):
        if not os.path.isdir(value):
            raise ArgumentError(f"--category {value}: {'is a file' if os.path.exists(value) else 'folder not found'}; "
                             "expected an adapter folder (as `anomclip fit` writes it) or a Hub repo id")


def run(args) -> int:
    from ..hub.base_source import check_base

    check_base(args.base)
    for source in args.category:
        check_category_source(source)
    from ..serving.http_gate import MB, GateLimits
    from ..serving.server import ServerOptions, serve

    limits = GateLimits(max_buffered_bytes=int(args.max_buffer_mb * MB), max_decoded_bytes=int(args.max_decoded_mb * MB),
                        max_per_client=args.max_per_client, body_timeout=args.body_timeout)
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    options = ServerOptions(host=args.host, port=args.port, device=str(resolve_device(args.device)),
                            max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout, max_mb=args.max_mb,
                            max_queue=args.max_queue, workers=args.workers, limits=limits,
                            header_timeout=args.header_timeout, max_connections=args.max_connections, api_key=api_key)
    count = len(args.category)
    print(f"loading {count} categor{'y' if count == 1 else 'ies'} for http://{args.host}:{args.port} (POST /predict, "
          f"GET /health{'; /predict needs the API key' if api_key else ''}); Ctrl+C stops", flush=True)
    serve(args.base, args.category, options, revision=args.revision, precision=args.precision,
          threshold=args.threshold, output_size=args.output_size, memory_backbone=args.memory_backbone,
          tile=args.tile, tile_overlap=args.tile_overlap,
          **({} if args.sensitivity is None else {"sensitivity": args.sensitivity}))
    return 0
