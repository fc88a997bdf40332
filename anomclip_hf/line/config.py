"""The line's settings: sources (each with its category), sinks, the state folder and the metrics endpoint,
from `anomclip watch` flags or a YAML file (`--config line.yaml`, see docs/guides/line.md).

Every setting is checked here, before anything loads or connects; a wrong one is a LineConfigError whose
message names the field (`sinks[1].url: ...`), which the command line prints as one line.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import urlparse

from ..errors import ConfigurationError

SOURCE_KINDS = ("folder", "video", "camera", "url")
SINK_TYPES = ("mqtt", "opcua", "webhook", "folder")
OPCUA_NODE_ROLES = ("decision", "score", "count")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_TOPIC_FIELDS = ("source", "category", "decision", "input_id")


class LineConfigError(ConfigurationError):
    """A misconfigured source, sink or setting; the message starts with the field's name."""


@dataclass
class SourceConfig:
    name: str
    kind: str  # folder | video | camera | url
    location: str  # the folder, the video file, the camera index, the stream URL
    category: Optional[str] = None  # an adapter folder or Hub id (with base), or None with onnx
    base: Optional[str] = None
    onnx: Optional[str] = None
    runtime: str = "onnxruntime"  # the engine of an exported model (inference.engines.ENGINES)
    threshold: Optional[float] = None
    settle: float = 0.5  # seconds a file's size and mtime must stay unchanged before it counts as complete
    poll: float = 0.2  # seconds between scans of a hot folder
    move_to: Optional[str] = None  # processed files go here (relative paths kept); default: left in place
    fps: Optional[float] = None  # frames sampled per second of the stream (None: every frame)
    live: Optional[bool] = None  # drop frames when scoring lags (latest wins); default: camera/url yes, video no
    queue: int = 64
    batch_size: int = 8
    overlays: bool = False  # write overlay PNGs (the folder sink's overlays/) and name them in the verdict

    @property
    def drops_frames(self) -> bool:
        return self.kind in ("camera", "url") if self.live is None else bool(self.live) and self.kind != "folder"

    def model_key(self) -> tuple:
        """Sources with the same key share one loaded Predictor; the same base is loaded once for all."""
        return (self.base, self.category, self.onnx, self.threshold)


@dataclass
class SinkConfig:
    name: str
    type: str
    url: Optional[str] = None  # mqtt(s)://, opc.tcp://, http(s)://
    path: Optional[str] = None  # the folder sink's folder
    topic: str = "anomclip/{source}/{category}"  # MQTT topic template (fields: source, category, decision, input_id)
    qos: int = 1
    username_env: str = "ANOMCLIP_MQTT_USERNAME"
    password_env: str = "ANOMCLIP_MQTT_PASSWORD"
    ca_file: Optional[str] = None  # MQTT TLS: a CA bundle (mqtts:// without it: the system's)
    nodes: dict = field(default_factory=dict)  # OPC UA: role (decision, score, count) -> node id
    timeout: float = 5.0  # seconds per attempt (webhook request, MQTT ack, OPC UA call)
    retries: int = 3  # webhook attempts per delivery round before the sink backs off
    secret_env: Optional[str] = None  # webhook: the environment variable with the HMAC-SHA256 key
    batch: int = 32  # verdicts sent per round before they are marked delivered


@dataclass
class LineConfig:
    sources: list[SourceConfig]
    sinks: list[SinkConfig]
    state: str = "anomclip_line"  # the journal and its lock
    metrics_host: str = "127.0.0.1"
    metrics_port: Optional[int] = 9400  # None: no endpoint
    device: str = "cpu"
    drain_seconds: float = 30.0  # on SIGTERM: how long sinks may take to deliver what is scored


# ---------------------------------------------------------------------------------------------- parsing
def _take(mapping: dict, where: str, allowed: set) -> dict:
    if not isinstance(mapping, dict):
        raise LineConfigError(f"{where}: expected a mapping of settings, got {type(mapping).__name__}")
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise LineConfigError(f"{where}.{unknown[0]}: unknown setting (known: {', '.join(sorted(allowed))})")
    return mapping


def _number(value, where: str, low: float = 0.0, strict: bool = False, integer: bool = False):
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and \
        (value > low if strict else value >= low) and (not integer or float(value).is_integer())
    if not ok:
        kind = "an integer" if integer else "a number"
        raise LineConfigError(f"{where}: expected {kind} {'>' if strict else '>='} {low:g}, got {value!r}")
    return int(value) if integer else float(value)


def _text(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise LineConfigError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _name(value, where: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise LineConfigError(f"{where}: {value!r} is no name (letters, digits, _ . -; at most 64)")
    return value


def parse_source(raw: dict, where: str) -> SourceConfig:
    raw = _take(raw, where, {"name", *SOURCE_KINDS, "category", "base", "onnx", "runtime", "threshold", "settle", "poll",
                             "move_to", "fps", "live", "queue", "batch_size", "overlays"})
    kinds = [kind for kind in SOURCE_KINDS if kind in raw]
    if len(kinds) != 1:
        raise LineConfigError(f"{where}: name exactly one of {', '.join(SOURCE_KINDS)} (got {kinds or 'none'})")
    kind = kinds[0]
    location = str(raw[kind]) if kind == "camera" else _text(raw[kind], f"{where}.{kind}")
    if kind == "camera" and not (location.isdigit() or location.startswith("/dev/")):
        raise LineConfigError(f"{where}.camera: expected a device index (0, 1, ...) or /dev/videoN, got {location!r}")
    if kind == "folder" and not os.path.isdir(location):
        raise LineConfigError(f"{where}.folder: {location} is not a folder")
    if kind == "video" and not os.path.isfile(location):
        raise LineConfigError(f"{where}.video: {location} is not a file")
    if kind == "url" and urlparse(location).scheme not in ("rtsp", "rtsps", "http", "https", "rtmp", "udp", "tcp"):
        raise LineConfigError(f"{where}.url: expected rtsp://, http(s)://, rtmp://, udp:// or tcp://, got {location!r}")
    source = SourceConfig(name=_name(raw.get("name", kind), f"{where}.name"), kind=kind, location=location)
    if raw.get("onnx") is not None:
        source.onnx = _text(raw["onnx"], f"{where}.onnx")
        if raw.get("base") is not None or raw.get("category") is not None:
            raise LineConfigError(f"{where}.onnx: an exported model carries its base and category; drop base/category")
        if not os.path.isfile(source.onnx):
            raise LineConfigError(f"{where}.onnx: {source.onnx} is not a file")
        if raw.get("runtime") is not None:
            from ..inference.engines import ENGINES

            if raw["runtime"] not in ENGINES:
                raise LineConfigError(f"{where}.runtime: expected one of {', '.join(sorted(ENGINES))}, "
                                      f"got {raw['runtime']!r}")
            source.runtime = raw["runtime"]
    else:
        source.base = _text(raw.get("base"), f"{where}.base")
        source.category = _text(raw.get("category"), f"{where}.category")
    if raw.get("threshold") is not None:
        from ..model.decisions import check_threshold  # the rule of stored thresholds: a number in (0, 2]

        try:
            source.threshold = check_threshold(raw["threshold"], f"{where}.threshold")
        except ValueError as error:
            raise LineConfigError(str(error)) from None
    for key in ("settle", "poll"):
        if key in raw:
            setattr(source, key, _number(raw[key], f"{where}.{key}", strict=key == "poll"))
    if raw.get("fps") is not None:
        source.fps = _number(raw["fps"], f"{where}.fps", strict=True)
    for key in ("queue", "batch_size"):
        if key in raw:
            setattr(source, key, _number(raw[key], f"{where}.{key}", low=1, integer=True))
    for key in ("live", "overlays"):
        if key in raw:
            if not isinstance(raw[key], bool):
                raise LineConfigError(f"{where}.{key}: expected true or false, got {raw[key]!r}")
            setattr(source, key, raw[key])
    if raw.get("move_to") is not None:
        source.move_to = _text(raw["move_to"], f"{where}.move_to")
        if kind != "folder":
            raise LineConfigError(f"{where}.move_to: only a folder source moves its files")
    return source


def parse_sink(raw: dict, where: str) -> SinkConfig:
    raw = _take(raw, where, {"name", "type", "url", "path", "topic", "qos", "username_env", "password_env", "ca_file",
                             "nodes", "timeout", "retries", "secret_env", "batch"})
    kind = raw.get("type")
    if kind not in SINK_TYPES:
        raise LineConfigError(f"{where}.type: expected one of {', '.join(SINK_TYPES)}, got {kind!r}")
    sink = SinkConfig(name=_name(raw.get("name", kind), f"{where}.name"), type=kind)
    for key in ("timeout",):
        if key in raw:
            setattr(sink, key, _number(raw[key], f"{where}.{key}", strict=True))
    for key, low in (("retries", 1), ("batch", 1)):
        if key in raw:
            setattr(sink, key, _number(raw[key], f"{where}.{key}", low=low, integer=True))
    if kind == "folder":
        sink.path = _text(raw.get("path"), f"{where}.path")
        return sink
    sink.url = _text(raw.get("url"), f"{where}.url")
    scheme = urlparse(sink.url).scheme
    schemes = {"mqtt": ("mqtt", "mqtts"), "opcua": ("opc.tcp",), "webhook": ("http", "https")}[kind]
    if scheme not in schemes or not urlparse(sink.url).hostname:
        raise LineConfigError(f"{where}.url: expected {' or '.join(s + '://HOST' for s in schemes)}..., got {sink.url!r}")
    if kind == "mqtt":
        sink.topic = _text(raw.get("topic", sink.topic), f"{where}.topic")
        try:
            sink.topic.format(**{name: "x" for name in _TOPIC_FIELDS})
        except (KeyError, IndexError, ValueError) as error:
            raise LineConfigError(f"{where}.topic: {sink.topic!r} uses an unknown field {error}; known: "
                                  f"{', '.join('{' + f + '}' for f in _TOPIC_FIELDS)}") from None
        if "#" in sink.topic or "+" in sink.topic:
            raise LineConfigError(f"{where}.topic: a publish topic holds no wildcard (# or +)")
        sink.qos = _number(raw.get("qos", 1), f"{where}.qos", low=0, integer=True)
        if sink.qos not in (1, 2):
            raise LineConfigError(f"{where}.qos: expected 1 or 2 (QoS 0 has no acknowledgement to journal)")
        for key in ("username_env", "password_env"):
            if key in raw:
                setattr(sink, key, _text(raw[key], f"{where}.{key}"))
        if raw.get("ca_file") is not None:
            sink.ca_file = _text(raw["ca_file"], f"{where}.ca_file")
            if not os.path.isfile(sink.ca_file):
                raise LineConfigError(f"{where}.ca_file: {sink.ca_file} is not a file")
    elif kind == "opcua":
        nodes = _take(raw.get("nodes"), f"{where}.nodes", set(OPCUA_NODE_ROLES))
        if not nodes:
            raise LineConfigError(f"{where}.nodes: name at least one of {', '.join(OPCUA_NODE_ROLES)}")
        sink.nodes = {role: _text(node, f"{where}.nodes.{role}") for role, node in nodes.items()}
    elif kind == "webhook" and raw.get("secret_env") is not None:
        sink.secret_env = _text(raw["secret_env"], f"{where}.secret_env")
        if not os.environ.get(sink.secret_env):
            raise LineConfigError(f"{where}.secret_env: the environment variable {sink.secret_env} is not set")
    return sink


def parse_config(raw: Any, where: str = "line.yaml") -> LineConfig:
    raw = _take(raw, where, {"sources", "sinks", "state", "metrics", "device", "drain_seconds"})
    sources = raw.get("sources")
    if not isinstance(sources, list) or not sources:
        raise LineConfigError(f"{where}.sources: expected a list of at least one source")
    sinks = raw.get("sinks")
    if not isinstance(sinks, list) or not sinks:
        raise LineConfigError(f"{where}.sinks: expected a list of at least one sink")
    config = LineConfig(sources=[parse_source(item, f"sources[{i}]") for i, item in enumerate(sources)],
                        sinks=[parse_sink(item, f"sinks[{i}]") for i, item in enumerate(sinks)])
    for what, items in (("sources", config.sources), ("sinks", config.sinks)):
        names = [item.name for item in items]
        duplicate = next((name for name in names if names.count(name) > 1), None)
        if duplicate:
            raise LineConfigError(f"{what}[{names.index(duplicate, names.index(duplicate) + 1)}].name: {duplicate!r} "
                                  f"is used twice; give each of the {what} its own name")
    if "state" in raw:
        config.state = _text(raw["state"], "state")
    if "device" in raw:
        config.device = _text(raw["device"], "device")
    if "drain_seconds" in raw:
        config.drain_seconds = _number(raw["drain_seconds"], "drain_seconds")
    metrics = raw.get("metrics", {})
    if metrics is False or metrics is None:
        config.metrics_port = None
    else:
        metrics = _take(metrics, "metrics", {"host", "port"})
        config.metrics_host = _text(metrics.get("host", config.metrics_host), "metrics.host")
        config.metrics_port = _number(metrics.get("port", config.metrics_port), "metrics.port", low=0, integer=True)
        if config.metrics_port > 65535:
            raise LineConfigError(f"metrics.port: expected 0..65535, got {config.metrics_port}")
    return config


def load_config(path: str) -> LineConfig:
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
    except OSError as error:
        raise LineConfigError(f"--config: cannot read {path}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise LineConfigError(f"--config: {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    return parse_config(raw, os.path.basename(path))
