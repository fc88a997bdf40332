"""`anomclip serve`: an HTTP endpoint with dynamic batching for one base and several categories (LitServe)."""

from __future__ import annotations

from ..flags.numeric import (
    MAX_OUTPUT_SIZE,
    int_range,
    nonnegative_float,
    positive_int,
    sensitivity_value,
    threshold_value,
)
from ..flags.precision import add_precision_argument
from ._common import add_command, resolve_device

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
    decide = serve.add_mutually_exclusive_group()
    decide.add_argument("--threshold", type=threshold_value, default=None,
                        help="decision threshold for every category, in (0, 2] (default: each one's stored threshold)")
    decide.add_argument("--sensitivity", type=sensitivity_value, default=None,
                        help="0-1 over each category's stored threshold: 0.5 decides at it, higher flags more "
                             "(docs/guides/thresholds.md)")
    serve.add_argument("--output-size", type=int_range(1, MAX_OUTPUT_SIZE), default=None,
                       help="anomaly-map size of ?map=1 (default: model input)")
    serve.add_argument("--max-batch-size", type=positive_int, default=8,
                       help="requests scored together (1: no batching) (default: %(default)s)")
    serve.add_argument("--batch-timeout", type=nonnegative_float, default=0.01,
                       help="seconds a batch waits for more requests (default: %(default)s)")
    serve.add_argument("--max-queue", type=positive_int, default=64,
                       help="requests in flight before new ones get 503 (default: %(default)s)")
    serve.add_argument("--max-mb", type=nonnegative_float, default=20.0, help="request body limit (default: 20)")
    serve.add_argument("--workers", type=positive_int, default=1, help="model worker processes (default: 1)")
    serve.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: a GPU if there is one)")
    add_precision_argument(serve)
    serve.set_defaults(func=run)


def run(args) -> int:
    if args.max_mb <= 0:
        raise ValueError(f"--max-mb {args.max_mb:g}: expected a size > 0")
    from ..hub.base_source import check_base

    check_base(args.base)
    from ..serving.server import ServerOptions, serve

    options = ServerOptions(host=args.host, port=args.port, device=str(resolve_device(args.device)),
                            max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout, max_mb=args.max_mb,
                            max_queue=args.max_queue, workers=args.workers)
    print(f"serving {len(args.category)} categor{'y' if len(args.category) == 1 else 'ies'} on "
          f"http://{args.host}:{args.port} (POST /predict, GET /health); Ctrl+C stops", flush=True)
    serve(args.base, args.category, options, revision=args.revision, precision=args.precision,
          threshold=args.threshold, output_size=args.output_size,
          **({} if args.sensitivity is None else {"sensitivity": args.sensitivity}))
    return 0
