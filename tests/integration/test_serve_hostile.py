"""`anomclip serve` against hostile clients, over real HTTP and raw sockets on 127.0.0.1 (bounded loops only).

Each test starts its own server (a subprocess in its own process group, stopped by the test) so the limits it
sets and the processes it kills touch nothing else. Good answers are held to the in-process Predictor's scores.
Other loopback addresses (127.0.0.2, ...) stand for other client machines: Linux routes all of 127/8 to lo.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scale_setup import write_scale_workspace

from anomclip_hf.inference.predictor import Predictor

httpx = pytest.importorskip("httpx")
psutil = pytest.importorskip("psutil")
pytest.importorskip("litserve")

REPO = Path(__file__).resolve().parents[2]
STARTUP_SECONDS = 240
PNG = {"content-type": "image/png"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    def __init__(self, process, url: str, log: Path):
        self.process, self.url, self.log = process, url, log

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def children(self) -> list:
        return psutil.Process(self.process.pid).children(recursive=True)

    def workers(self) -> list:
        """The model worker processes (spawned, so their command line runs multiprocessing.spawn)."""
        return [child for child in self.children() if "spawn_main" in " ".join(child.cmdline())]

    def wait_healthy(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"server exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        pytest.fail(f"server not healthy within {seconds} s:\n{self.log_text()[-3000:]}")


@contextlib.contextmanager
def running_server(workspace, *extra: str, categories=("widget", "gadget"), env=None):
    port = free_port()
    command = [sys.executable, "-m", "anomclip_hf", "serve", "--base", str(workspace.base), "--port", str(port),
               "--device", "cpu", *[arg for name in categories for arg in ("--category", str(workspace.root / name))],
               *extra]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                   "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    log = workspace.root / f"serve-{port}.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=environment, cwd=str(REPO),
                                   start_new_session=True)
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        server.wait_healthy(STARTUP_SECONDS)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def workspace(tiny_clip, tmp_path_factory):
    return write_scale_workspace(tmp_path_factory.mktemp("serve-hostile"), tiny_clip)


@pytest.fixture(scope="module")
def expected(workspace):
    from anomclip_hf.model.modeling_anomclip import AnomCLIPModel

    model = AnomCLIPModel.from_base(str(workspace.base))
    predictors = {}
    for name in ("widget", "gadget"):
        model.load_category(str(workspace.root / name), activate=False)
        predictors[name] = Predictor.from_model(model, name)
    return predictors


def score_alone(predictor: Predictor, path: Path) -> float:
    [result] = predictor.predict([str(path)])
    return result.score


# ------------------------------------------------------------------------------------------------ hostile bodies
def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def text_bomb_png(after_pixels: bool) -> bytes:
    """An 8x8 PNG with a zTXt chunk of ~23 KB that inflates to 24 MB (past Pillow's text limit), before the
    pixels (seen when the header is read) or after them (seen only when the pixels are decoded)."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0))
    pixels = png_chunk(b"IDAT", zlib.compress(b"\0" * (9 * 8)))
    bomb = png_chunk(b"zTXt", b"comment\0\0" + zlib.compress(b"\0" * (24 * 2 ** 20), 9))
    middle = pixels + bomb if after_pixels else bomb + pixels
    return b"\x89PNG\r\n\x1a\n" + header + middle + png_chunk(b"IEND", b"")


def strip_png(width: int = 100_000_000) -> bytes:
    """A 100-megapixel 1-pixel-high grey strip: ~97 KB of PNG."""
    raw = b"\0" + b"\0" * width
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, 1, 8, 0, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b""))


EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"
       b"newpath 0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n")


def test_bad_requests_batched_with_good_ones_fail_alone(workspace, expected, tmp_path):
    """Good and hostile bodies posted at once into batches of 8: every good request gets the score it gets
    alone; each bad one its own 4xx with a JSON error; no stand-in `gs` on PATH runs on the EPS body."""
    marker = tmp_path / "gs-ran"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "gs").write_text(f"#!/bin/sh\necho ran > {marker}\nexit 0\n")
    (fake_bin / "gs").chmod(0o755)
    bad = {"text bomb (header)": text_bomb_png(False), "text bomb (after pixels)": text_bomb_png(True),
           "100-megapixel strip": strip_png(), "garbage": b"\x00garbage" * 300, "eps": EPS}
    env = {"PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"}
    with running_server(workspace, "--max-batch-size", "8", "--batch-timeout", "0.5", env=env) as server:
        jobs = [("good", workspace.good[i % len(workspace.good)].read_bytes(), i) for i in range(6)]
        jobs += [(name, body, None) for name, body in bad.items()]
        jobs = [jobs[i] for i in (0, 6, 1, 7, 2, 8, 3, 9, 4, 10, 5)]  # bad ones between good ones

        def post(job):
            return httpx.post(server.url + "/predict/widget", content=job[1], headers=PNG, timeout=120)

        with ThreadPoolExecutor(len(jobs)) as pool:
            answers = list(pool.map(post, jobs))
        for (name, _, index), answer in zip(jobs, answers):
            if name == "good":
                assert answer.status_code == 200, (name, answer.text)
                path = workspace.good[index % len(workspace.good)]
                assert abs(answer.json()["score"] - score_alone(expected["widget"], path)) < 1e-6
            else:
                assert 400 <= answer.status_code < 500, (name, answer.status_code, answer.text)
                assert answer.json()["status"] == answer.status_code and answer.json()["error"], name
        assert not marker.exists(), "a stand-in gs was run on a request body"
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200


# ------------------------------------------------------------------------------------------------ slow clients
def stalled_socket(port: int, source: str, body_sent: int = 100, declared: int = 4000) -> socket.socket:
    """A client from `source` that sends headers and the first bytes of a body, then waits."""
    client = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    client.sendall(f"POST /predict/widget HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                   f"Content-Length: {declared}\r\n\r\n".encode() + b"\x89PNG" + b"\0" * (body_sent - 4))
    return client


def read_status(client: socket.socket, seconds: float):
    """The HTTP status the server sends on `client` within `seconds` (None: nothing; 0: closed)."""
    client.settimeout(seconds)
    try:
        data = client.recv(4096)
    except (socket.timeout, ConnectionResetError):
        return None
    if not data:
        return 0
    return int(data.split(b" ", 2)[1])


def test_64_stalled_clients_do_not_stop_a_65th(workspace, expected):
    with running_server(workspace, "--body-timeout", "4", "--header-timeout", "3", "--max-per-client", "16") as server:
        port = int(server.url.rsplit(":", 1)[1])
        stalled = [stalled_socket(port, f"127.0.0.{2 + index % 2}") for index in range(64)]
        half_header = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.7", 0))
        half_header.sendall(b"POST /predict/widget HTTP/1.1\r\nHost: x\r\nContent-Le")
        try:
            time.sleep(0.5)
            started = time.monotonic()
            answer = httpx.post(server.url + "/predict/widget", content=workspace.good[0].read_bytes(), headers=PNG,
                                timeout=30)
            waited = time.monotonic() - started
            assert answer.status_code == 200, answer.text
            assert abs(answer.json()["score"] - score_alone(expected["widget"], workspace.good[0])) < 1e-6
            assert waited < 5, f"the 65th client waited {waited:.1f} s"
            # two addresses: 16 of each are read (then cut off at the body deadline), 16 were told 429 at once
            statuses = [read_status(client, 8) for client in stalled]
            assert statuses.count(429) == 32 and statuses.count(408) == 32, statuses
            assert read_status(half_header, 2) in (0, None) or half_header.recv(1) == b""  # closed by then
        finally:
            for client in [*stalled, half_header]:
                client.close()


def test_many_large_bodies_are_refused_early_not_buffered(workspace):
    """64 clients posting 19 MB at once: the byte budget answers most with 503 before their body is read;
    no process of the server grows by more than a few hundred MB."""
    with running_server(workspace, "--max-mb", "20", "--max-buffer-mb", "64", "--max-per-client", "64",
                        "--body-timeout", "60") as server:
        processes = [psutil.Process(server.process.pid), *server.children()]
        before = {process.pid: peak_rss(process) for process in processes}
        body = os.urandom(19 * 2 ** 20)

        def post(_):
            with contextlib.suppress(httpx.HTTPError):
                return httpx.post(server.url + "/predict/widget", content=body, headers=PNG, timeout=120).status_code
            return None

        with ThreadPoolExecutor(64) as pool:
            statuses = list(pool.map(post, range(64)))
        growth = {process.pid: peak_rss(process) - before[process.pid] for process in processes}
        # At most 3 bodies of 19 MB fit the 64 MB budget at once; how many get their turn after an earlier one is
        # answered depends on the machine's load (48 refused when quiet, 44 seen under a loaded test run).
        assert statuses.count(503) >= 32 and set(statuses) <= {400, 503, None}, statuses
        assert max(growth.values()) < 400 * 2 ** 20, growth
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200


def peak_rss(process) -> int:
    with open(f"/proc/{process.pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def float_tiff(tmp_path: Path) -> bytes:
    """A 10000x10000 32-bit float TIFF (400 MB decoded) of ~700 KB (deflate)."""
    path = tmp_path / "float.tif"
    Image.new("F", (10_000, 10_000), 0.5).save(path, compression="tiff_adobe_deflate")
    return path.read_bytes()


def test_eight_huge_float_tiffs_do_not_inflate_the_worker(workspace, tmp_path):
    with running_server(workspace, "--max-per-client", "16") as server:
        [worker] = server.workers()
        before = peak_rss(worker)
        body = float_tiff(tmp_path)

        def post(_):
            return httpx.post(server.url + "/predict/widget", content=body, headers={"content-type": "image/tiff"},
                              timeout=120)

        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, range(8)))
        assert all(answer.status_code in (400, 413, 503) for answer in answers), [a.text for a in answers]
        assert time.monotonic() - started < 30
        assert peak_rss(worker) - before < 1024 * 2 ** 20, (peak_rss(worker) - before) / 2 ** 20
        good = httpx.post(server.url + "/predict/widget", content=workspace.good[0].read_bytes(), headers=PNG,
                          timeout=60)
        assert good.status_code == 200


# ------------------------------------------------------------------------------------------------ the worker
def test_a_killed_worker_is_restarted_and_its_requests_get_503(workspace, expected):
    with running_server(workspace, "--batch-timeout", "3", "--max-batch-size", "8") as server:
        path = workspace.good[0]
        [worker] = server.workers()
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, server.url + "/predict/widget", content=path.read_bytes(),
                                  headers=PNG, timeout=60)
            time.sleep(1.0)  # the request waits in the worker's 3-second batch window
            started = time.monotonic()
            os.kill(worker.pid, signal.SIGKILL)  # as the OOM killer does
            answer = pending.result(timeout=60)
        assert answer.status_code == 503 and time.monotonic() - started < 5, answer.text
        assert "restart" in answer.json()["error"]
        assert server.process.poll() is None, "the server stopped with its worker"
        server.wait_healthy(120)
        [restarted] = server.workers()
        assert restarted.pid != worker.pid
        again = httpx.post(server.url + "/predict/widget", content=path.read_bytes(), headers=PNG, timeout=60)
        assert again.status_code == 200, again.text
        assert abs(again.json()["score"] - score_alone(expected["widget"], path)) < 1e-6


# ------------------------------------------------------------------------------------------------ the front door
def test_api_key_health_methods_and_access_log(workspace, expected):
    with running_server(workspace, env={"ANOMCLIP_API_KEY": "s3cret-key"}) as server:
        image = workspace.good[1].read_bytes()
        url = server.url + "/predict/gadget"
        assert httpx.post(url, content=image, headers=PNG, timeout=60).status_code == 401
        wrong = httpx.post(url, content=image, headers={**PNG, "authorization": "Bearer s3cret-kez"}, timeout=60)
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        right = httpx.post(url, content=image, headers={**PNG, "authorization": "Bearer s3cret-key"}, timeout=60)
        assert right.status_code == 200, right.text
        assert abs(right.json()["score"] - score_alone(expected["gadget"], workspace.good[1])) < 1e-6
        for method in ("GET", "POST", "HEAD"):
            health = httpx.request(method, server.url + "/health", timeout=10)
            assert health.status_code == 200, (method, health.text)
            assert (health.content == b"") == (method == "HEAD")
        time.sleep(0.5)
        lines = [line for line in server.log_text().splitlines() if " access " in line]
        assert any("POST /predict/gadget 401" in line for line in lines), lines
        assert any("POST /predict/gadget 200" in line and f"in={len(image)}" in line and "ms" in line
                   for line in lines), lines
        assert any("HEAD /health 200" in line for line in lines)
        assert base64.b64encode(image[:60]).decode()[:40] not in server.log_text()  # never the body


def test_sigterm_drains_the_request_in_flight_and_exits_0(workspace, expected):
    with running_server(workspace, "--batch-timeout", "2") as server:
        path = workspace.good[2]
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, server.url + "/predict/widget", content=path.read_bytes(),
                                  headers=PNG, timeout=60)
            time.sleep(0.7)
            server.process.send_signal(signal.SIGTERM)
            answer = pending.result(timeout=60)
        assert answer.status_code == 200, answer.text
        assert abs(answer.json()["score"] - score_alone(expected["widget"], path)) < 1e-6
        assert server.process.wait(timeout=60) == 0
        time.sleep(1)
        assert "Traceback" not in server.log_text(), server.log_text()[-3000:]


# ------------------------------------------------------------------------------------------------ arguments
def serve_command(workspace, *arguments, timeout=240):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "anomclip_hf", "serve", "--base", str(workspace.base),
                           "--device", "cpu", "--port", str(free_port()), *arguments], capture_output=True,
                          text=True, env=env, cwd=str(REPO), timeout=timeout)


def one_line_error(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    return lines[-1]


def test_argument_errors_are_one_line(workspace, tmp_path, tiny_clip):
    import shutil

    missing = one_line_error(serve_command(workspace, "--category", str(tmp_path / "no-such-adapter")))
    assert "no-such-adapter" in missing and "not found" in missing
    huge = one_line_error(serve_command(workspace, "--category", str(workspace.widget), "--max-mb", "1e308"))
    assert "--max-mb" in huge and "1e308" in huge
    twin = tmp_path / "widget-copy"
    shutil.copytree(workspace.widget, twin)
    same = one_line_error(serve_command(workspace, "--category", str(workspace.widget), "--category", str(twin)))
    assert str(workspace.widget) in same and str(twin) in same and "'widget'" in same
    dino = dino_adapter(tiny_clip, tmp_path)
    no_backbone = one_line_error(serve_command(workspace, "--category", str(dino)))
    assert "--memory-backbone" in no_backbone


def dino_adapter(tiny_clip, tmp_path: Path) -> Path:
    import copy

    from anomclip_hf.model.modeling_anomclip import AnomCLIPModel
    from anomclip_hf.model.tokenization import build_offline_clip_tokenizer

    golden = REPO / "tests" / "golden" / "dino"
    model = AnomCLIPModel.from_clip(copy.deepcopy(tiny_clip), tokenizer=build_offline_clip_tokenizer(real_vocab=False),
                                    memory_backbone=str(golden / "tiny_dinov2"), memory_image_size=112)
    model.add_category("widget", reference_images=[str(golden / "images" / f"train_{i}.png") for i in range(2)])
    return Path(model.save_category(tmp_path / "dino" / "widget"))


def test_decoded_size_counts_bytes_per_pixel_from_the_header():
    from anomclip_hf.serving.http_gate import RequestProblem, decoded_size

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((30, 40), dtype=np.float32), mode="F").save(buffer, format="TIFF")
    assert decoded_size(buffer.getvalue()) == 30 * 40 * 4
    buffer = io.BytesIO()
    Image.new("L", (50, 20)).save(buffer, format="PNG")
    assert decoded_size(buffer.getvalue()) == 50 * 20 * 3  # the RGB copy is made from it
    with pytest.raises(RequestProblem) as refused:
        decoded_size(EPS)
    assert refused.value.status == 400


# ------------------------------------------------------------------------------------------------ the gate alone
def call_gate(gate, method: str, path: str, headers: dict, messages: list, client=("127.0.0.1", 5000)):
    """One request through the ASGI gate: `messages` are what receive() returns in turn, then it waits
    forever (a stalled client). Returns (status, JSON answer, number of receive() calls)."""
    import asyncio
    import json

    sent, calls = [], [0]

    async def receive():
        calls[0] += 1
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "query_string": b"", "client": client,
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(gate(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body) if body else None, calls[0]


def make_gate(tmp_path, **limits):
    import json

    from anomclip_hf.serving.http_gate import GateLimits, ServeGate

    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"categories": ["widget"], "thresholds": {}}))

    async def metrics(scope, receive, send):
        from anomclip_hf.serving.http_gate import respond

        await respond(send, 200, {"metrics": True})

    async def downstream(scope, receive, send):
        raise AssertionError("nothing reaches LitServe in these tests")

    return ServeGate(downstream, catalog=str(catalog), limits=GateLimits(**limits), api_key="k",
                     routes={"/metrics": metrics})


def test_gate_cuts_off_a_stalled_body_and_refuses_over_budget_before_reading(tmp_path):
    gate = make_gate(tmp_path, body_timeout=0.3, max_buffered_bytes=1000)
    key = {"authorization": "Bearer k", "content-type": "image/png"}
    started = time.monotonic()
    status, answer, _ = call_gate(gate, "POST", "/predict", {**key, "content-length": "500"},
                                  [{"type": "http.request", "body": b"x" * 10, "more_body": True}])
    assert status == 408 and "0.3 s" in answer["error"] and time.monotonic() - started < 3
    status, answer, calls = call_gate(gate, "POST", "/predict", {**key, "content-length": "1001"}, [])
    assert status == 503 and calls == 0 and "budget" in answer["error"]
    assert gate.buffered_bytes == 0 and gate.in_flight == 0 and not gate.per_client  # all released


def test_gate_extra_routes_sit_behind_the_api_key(tmp_path):
    gate = make_gate(tmp_path)
    assert call_gate(gate, "GET", "/metrics", {}, [])[0] == 401
    assert call_gate(gate, "GET", "/metrics", {"authorization": "Bearer k"}, [])[:2] == (200, {"metrics": True})
    assert call_gate(gate, "GET", "/metrics", {"authorization": "Bearer K"}, [])[0] == 401
