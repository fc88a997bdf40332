"""Real components for the line-service tests: a mosquitto broker (the Debian program) on a free loopback port,
an MQTT subscriber that keeps every message, an HTTP receiver for webhooks that fails or hangs on purpose, an
OPC UA server (asyncua) standing in for a PLC, and a tiny saved base + adapter to score with."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import ipaddress
import json
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fixed_port() -> int:
    """A free port below Linux's ephemeral range (32768-60999): a broker stopped mid-test must get its port back,
    and a client retrying a port inside that range can be handed that very port as its own source port and
    connect to itself (TCP self-connect), taking the port."""
    import random

    for _ in range(200):
        port = random.randint(20000, 32000)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


def wait_until(condition, timeout: float, what: str, step: float = 0.05, explain=None):
    """Poll `condition` until it is true; AssertionError naming `what` (and `explain()`'s text) otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}" + (f": {explain()}" if explain else ""))


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


class Mosquitto:
    """mosquitto on 127.0.0.1:port with a temporary config; persistence on, so a subscriber's persistent session
    (and its queued QoS 1 messages) survives a stop() / start()."""

    def __init__(self, folder: Path, port: Optional[int] = None, extra: str = ""):
        self.folder, self.port = Path(folder), port or fixed_port()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config = self.folder / "mosquitto.conf"
        # `extra`: lines of the listener (TLS files, password_file)
        # `user`: started as root, mosquitto would switch to the mosquitto user, which cannot write its
        # persistence file here, and a restart would forget the subscriber's session.
        self.config.write_text(f"user {getpass.getuser()}\nper_listener_settings false\n"
                               f"listener {self.port} 127.0.0.1\n{extra or 'allow_anonymous true'}\n"
                               f"persistence true\n"
                               f"persistence_location {self.folder}/\nautosave_interval 1\n"
                               f"log_dest file {self.folder}/mosquitto.log\nlog_type all\n")
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> "Mosquitto":
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        wait_until(lambda: port_open(self.port) or self.process.poll() is not None, 10, "mosquitto to listen")
        assert self.process.poll() is None, (self.folder / "mosquitto.log").read_text()
        return self

    def log(self) -> str:
        path = self.folder / "mosquitto.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


def tls_files(folder: Path) -> dict:
    """A throw-away CA and a server certificate for 127.0.0.1 (cryptography), as PEM files."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    validity = dict(not_valid_before=now - datetime.timedelta(minutes=5), not_valid_after=now + datetime.timedelta(days=1))

    def certificate(subject, key, issuer, issuer_key, ca: bool):
        builder = x509.CertificateBuilder(subject_name=subject, issuer_name=issuer, public_key=key.public_key(),
                                          serial_number=x509.random_serial_number(), **validity)
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(
                ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "line test CA")])
    ca = certificate(ca_name, ca_key, ca_name, ca_key, True)
    server = certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]), server_key, ca_name,
                         ca_key, False)
    files = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    folder.mkdir(parents=True, exist_ok=True)
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    return files


def password_file(folder: Path, user: str, password: str) -> Path:
    path = folder / "passwords"
    subprocess.run([shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd", "-b", "-c", str(path), user,
                    password], check=True, capture_output=True)
    return path


class Subscriber:
    """A persistent-session QoS 1 subscriber keeping (topic, verdict) of every message, reconnecting by itself."""

    def __init__(self, port: int, topic: str = "anomclip/#", client_id: str = "line-test-subscriber",
                 tls_ca: Optional[Path] = None, credentials: Optional[tuple[str, str]] = None):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, dict]] = []
        self.arrivals: list[float] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                             protocol=mqtt.MQTTv311)
        client.reconnect_delay_set(0.1, 0.5)
        if tls_ca is not None:
            client.tls_set(ca_certs=str(tls_ca))
        if credentials is not None:
            client.username_pw_set(*credentials)

        def on_connect(client, userdata, flags, reason, properties):
            client.subscribe(topic, qos=1)

        def on_subscribe(*args):
            self.subscribed.set()

        def on_message(client, userdata, message):
            with self._lock:
                self.messages.append((message.topic, json.loads(message.payload)))
                self.arrivals.append(time.monotonic())

        client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
        client.connect("127.0.0.1", port, keepalive=5)
        client.loop_start()
        wait_until(self.subscribed.is_set, 10, "the subscription")
        self.client = client

    def verdicts(self) -> list[dict]:
        with self._lock:
            return [verdict for _, verdict in self.messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 answering 500 to the first `fail_first` POSTs and sleeping `hang_seconds` on
    the first `hang_first` ones; keeps (headers, verdict) of every POST it answered 200."""

    def __init__(self, fail_first: int = 0, hang_first: int = 0, hang_seconds: float = 0.0):
        self.accepted: list[tuple[dict, dict, bytes]] = []
        self.calls = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.calls += 1
                call = outer.calls
                if call <= hang_first:
                    time.sleep(hang_seconds)
                status = 500 if call <= fail_first else 200
                if status == 200:
                    outer.accepted.append((dict(self.headers), json.loads(body), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/verdicts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def verdicts(self) -> list[dict]:
        return [verdict for _, verdict, _ in self.accepted]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Plc:
    """An asyncua Server (the PLC) on its own event loop thread with Score (Double), Decision (String) and
    Count (Int64) nodes; `writes` keeps every (node name, value) a client wrote, in order."""

    NAMESPACE = "urn:anomclip:test-plc"

    def __init__(self, port: Optional[int] = None):
        self.port = port or free_port()
        self.url = f"opc.tcp://127.0.0.1:{self.port}/plc"
        self.writes: list[tuple[str, object]] = []
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: Optional[asyncio.Event] = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self._ready.wait(30), "the OPC UA server did not start"
        if self.error:
            raise self.error

    error = None

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self):
        from asyncua import Server, ua
        from asyncua.common.callback import CallbackType

        try:
            server = Server()
            await server.init()
            server.set_endpoint(self.url)
            index = await server.register_namespace(self.NAMESPACE)
            line = await server.nodes.objects.add_object(ua.NodeId("Line1", index), "Line1")
            self.nodes = {}
            for name, value, kind in (("Score", 0.0, ua.VariantType.Double), ("Decision", "", ua.VariantType.String),
                                      ("Count", 0, ua.VariantType.Int64)):
                node = await line.add_variable(ua.NodeId(f"Line1.{name}", index), name, ua.Variant(value, kind))
                await node.set_writable()
                self.nodes[name] = node
            names = {node.nodeid: name for name, node in self.nodes.items()}

            async def written(event, dispatcher):
                for request, status in zip(event.request_params.NodesToWrite, event.response_params):
                    if status.is_good() and request.NodeId in names:
                        self.writes.append((names[request.NodeId], request.Value.Value.Value))

            server.iserver.subscribe_server_callback(CallbackType.PostWrite, written)
            self.node_ids = {name: f"ns={index};s=Line1.{name}" for name in self.nodes}
            self._stop = asyncio.Event()
            async with server:
                self._ready.set()
                await self._stop.wait()
        except Exception as error:  # reported to the constructor
            self.error = error
            self._ready.set()

    def read(self, name: str):
        return asyncio.run_coroutine_threadsafe(self.nodes[name].read_value(), self.loop).result(10)

    def close(self):
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(15)


def write_line_workspace(root: Path, tiny_clip):
    """A saved tiny base with the widget and gadget categories (scale_setup's), images to drop, a hot folder."""
    from scale_setup import write_scale_workspace

    workspace = write_scale_workspace(root, tiny_clip)
    workspace.hot = root / "hot"
    workspace.hot.mkdir()
    return workspace


def drop(image_path: Path, folder: Path, name: Optional[str] = None) -> Path:
    """Copy an image into the hot folder the way a camera PC does: written beside, then renamed into place."""
    target = folder / (name or image_path.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / f".{target.name}.part"
    partial.write_bytes(image_path.read_bytes())
    partial.rename(target)
    return target
