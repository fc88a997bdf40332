"""`anomclip watch`: the line service -- a hot folder, video, camera or stream scored as it comes, each verdict
delivered to MQTT, OPC UA, a webhook and/or a folder, once per input across restarts (docs/guides/line.md)."""

from __future__ import annotations

import sys

from ..flags.numeric import finite_float, int_range, nonnegative_float, positive_int, threshold_value
from ._common import add_command


def add_parser(commands) -> None:
    watch = add_command(
        commands, "watch", "score a hot folder, video or camera as a line produces it; deliver each verdict to "
        "MQTT, OPC UA, a webhook or a folder",
        "anomclip watch --base anomclip_demo/base --category runs/fit/adapter --folder incoming/ "
        "--mqtt-url mqtt://127.0.0.1:1883",
        "anomclip watch --base B --category C --folder incoming/ --output runs/line --move-to done",
        "anomclip watch --base B --category C --camera 0 --fps 2 --opcua-url opc.tcp://plc:4840 "
        "--opcua-node score=ns=2;s=Line1.Score --opcua-node decision=ns=2;s=Line1.Decision",
        "anomclip watch --config line.yaml")
    watch.add_argument("--config", default=None, help="a line.yaml with several sources, categories and sinks "
                       "(then none of the flags below)")
    model = watch.add_argument_group("model (one source)")
    model.add_argument("--base", default=None, help="the CLIP or AnomCLIP base the category was trained on")
    model.add_argument("--category", default=None, help="category adapter folder or Hub repo id")
    model.add_argument("--onnx", default=None, help="an exported model instead of --base and --category")
    model.add_argument("--threshold", type=threshold_value, default=None,
                       help="decision threshold, in (0, 2] (default: the one stored with the category)")
    model.add_argument("--batch-size", type=positive_int, default=8, help="inputs scored together when they "
                       "queue up (default: %(default)s)")
    model.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default: %(default)s)")
    source = watch.add_argument_group("source (one of)")
    source.add_argument("--folder", default=None, help="a hot folder (sub-folders included): each new image file, "
                        "once it stopped growing")
    source.add_argument("--video", default=None, help="a video file")
    source.add_argument("--camera", default=None, help="a camera device index (0, 1, ...) or /dev/videoN")
    source.add_argument("--stream", default=None, help="a stream URL (rtsp://, http://, ...)")
    source.add_argument("--settle", type=nonnegative_float, default=0.5,
                        help="seconds a file must stay unchanged before it is scored (default: %(default)s)")
    source.add_argument("--move-to", default=None, help="move scored files to this folder (relative to --folder)")
    source.add_argument("--fps", type=finite_float, default=None, help="frames sampled per second of video/camera")
    source.add_argument("--overlays", action="store_true", help="write an overlay PNG per input (into --output)")
    sinks = watch.add_argument_group("sinks (one or more)")
    sinks.add_argument("--mqtt-url", default=None, help="mqtt://HOST[:PORT] or mqtts:// (TLS); credentials from "
                       "ANOMCLIP_MQTT_USERNAME / ANOMCLIP_MQTT_PASSWORD")
    sinks.add_argument("--mqtt-topic", default="anomclip/{source}/{category}",
                       help="topic template: {source} {category} {decision} {input_id} (default: %(default)s)")
    sinks.add_argument("--opcua-url", default=None, help="opc.tcp://HOST:PORT of the PLC's OPC UA server")
    sinks.add_argument("--opcua-node", action="append", default=[], metavar="ROLE=NODEID",
                       help="score=..., decision=..., count=... (repeat)")
    sinks.add_argument("--webhook-url", default=None, help="http(s)://... gets each verdict as a JSON POST")
    sinks.add_argument("--webhook-secret-env", default=None,
                       help="environment variable holding the HMAC-SHA256 key for X-Anomclip-Signature")
    sinks.add_argument("--output", default=None, help="folder sink: scores.csv (+ overlays/ with --overlays)")
    service = watch.add_argument_group("service")
    service.add_argument("--state", default=None, help="the journal's folder (default: --output/.line-state, "
                         "else ./anomclip_line)")
    service.add_argument("--metrics-port", type=int_range(0, 65535), default=9400,
                         help="GET /metrics and /health on 127.0.0.1:PORT; 0: a free port (default: %(default)s)")
    service.add_argument("--no-metrics", action="store_true", help="no metrics endpoint")
    service.add_argument("--drain-seconds", type=nonnegative_float, default=30.0,
                         help="on SIGTERM: how long sinks may take to deliver their backlog (default: %(default)s)")
    watch.set_defaults(func=run)


def config_from_flags(args):
    """The LineConfig of the flags (the one-source case), checked by the same rules as a line.yaml."""
    from ..line.config import LineConfigError, load_config, parse_config

    flag_names = ("base", "category", "onnx", "folder", "video", "camera", "stream", "mqtt_url", "opcua_url",
                  "webhook_url", "output", "state", "move_to", "fps", "threshold")
    if args.config:
        given = ["--" + name.replace("_", "-") for name in flag_names if getattr(args, name) is not None]
        if given:
            raise LineConfigError(f"--config names the sources and sinks; drop {', '.join(given)}")
        return load_config(args.config)
    kinds = [(kind, value) for kind, value in (("folder", args.folder), ("video", args.video),
                                               ("camera", args.camera), ("url", args.stream)) if value is not None]
    if len(kinds) != 1:
        raise LineConfigError("name one source: --folder, --video, --camera or --stream (or --config line.yaml)")
    kind, location = kinds[0]
    source = {"name": "line", kind: location, "settle": args.settle, "batch_size": args.batch_size,
              "overlays": args.overlays}
    for key in ("base", "category", "onnx", "threshold", "fps", "move_to"):
        if getattr(args, key) is not None:
            source[key] = getattr(args, key)
    sinks = []
    if args.mqtt_url:
        sinks.append({"type": "mqtt", "url": args.mqtt_url, "topic": args.mqtt_topic})
    if args.opcua_url or args.opcua_node:
        nodes = {}
        for item in args.opcua_node:
            role, separator, node = item.partition("=")
            if not separator:
                raise LineConfigError(f"--opcua-node: expected ROLE=NODEID (score=ns=2;s=Score), got {item!r}")
            nodes[role] = node
        sinks.append({"type": "opcua", "url": args.opcua_url, "nodes": nodes})
    if args.webhook_url:
        sinks.append({"type": "webhook", "url": args.webhook_url,
                      **({"secret_env": args.webhook_secret_env} if args.webhook_secret_env else {})})
    if args.output:
        sinks.append({"type": "folder", "path": args.output})
    if not sinks:
        raise LineConfigError("name a sink: --mqtt-url, --opcua-url, --webhook-url or --output")
    import os

    raw = {"sources": [source], "sinks": sinks, "device": args.device, "drain_seconds": args.drain_seconds,
           "state": args.state or (os.path.join(args.output, ".line-state") if args.output else "anomclip_line"),
           "metrics": False if args.no_metrics else {"port": args.metrics_port}}
    return parse_config(raw, "flags")


def run(args) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncua").setLevel(logging.ERROR)  # its retries' warnings repeat what the sink logs once
    config = config_from_flags(args)
    for source in config.sources:
        if source.base is not None:
            from ..hub.base_source import check_base

            check_base(source.base)
    from ..line.service import LineService

    service = LineService(config)

    def ready(service):
        where = f"; metrics on http://{config.metrics_host}:{service.server.port}/metrics" if service.server else ""
        print(f"watching {', '.join(s.name for s in config.sources)} -> {', '.join(s.name for s in config.sinks)} "
              f"(journal in {config.state}){where}; SIGTERM or Ctrl+C drains and stops", flush=True)

    code = service.run(on_ready=ready)
    print(f"stopped: {service.scorer.scored if service.scorer else 0} input(s) scored this run", file=sys.stderr)
    return code
