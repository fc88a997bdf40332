"""`anomclip serve` over real HTTP (httpx) against a server on 127.0.0.1, a random port, started
and stopped by the test (its whole process group), plus the request gate alone on an in-process ASGI app.

Answers are held to the in-process Predictor's scores; bad requests (hostile rows) are in
tests/test_hostile_adapters.py, which reuses `start_server`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scale_setup import write_scale_workspace

from anomclip_hf.inference.predictor import Predictor

httpx = pytest.importorskip("httpx")
pytest.importorskip("litserve")  # the serve extra (in dev)

REPO = Path(__file__).resolve().parents[2]
STARTUP_SECONDS = 180  # two cold torch imports on 2 busy cores; the loop polls every 0.2 s


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def start_server(workspace, *extra: str, categories=("widget", "gadget")):
    """`python -m anomclip_hf serve` in its own process group; yields the base URL once /health says ok, and
    always stops the whole group (SIGINT, then SIGKILL after 30 s)."""
    port = free_port()
    command = [sys.executable, "-m", "anomclip_hf", "serve", "--base", str(workspace.base), "--port", str(port),
               "--device", "cpu", *[arg for name in categories for arg in ("--category", str(workspace.root / name))],
               *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    log = open(workspace.root / f"serve-{port}.log", "w+")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO),
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                log.seek(0)
                pytest.fail(f"server exited with {process.returncode}:\n{log.read()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready within {STARTUP_SECONDS} s")
            time.sleep(0.2)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def workspace(tiny_clip, tmp_path_factory):
    return write_scale_workspace(tmp_path_factory.mktemp("serve"), tiny_clip)


@pytest.fixture(scope="module")
def server(workspace):
    with start_server(workspace, "--max-queue", "6", "--max-mb", "1") as url:
        yield url


@pytest.fixture(scope="module")
def expected(workspace):
    """The in-process Predictor of each category: the answers the server must give."""
    from anomclip_hf.model.modeling_anomclip import AnomCLIPModel

    model = AnomCLIPModel.from_base(str(workspace.base))
    predictors = {}
    for name in ("widget", "gadget"):
        model.load_category(str(workspace.root / name), activate=False)
        predictors[name] = Predictor.from_model(model, name)
    return predictors


def post_image(url: str, path: Path, **options):
    return httpx.post(url, content=path.read_bytes(), headers={"content-type": "image/png"}, timeout=60, **options)


def check_answer(answer: dict, predictor: Predictor, path: Path, maps: bool = False):
    [result] = predictor.predict([str(path)], maps=maps)
    assert answer["category"] == predictor.category
    assert abs(answer["score"] - result.score) < 1e-6
    threshold = predictor.threshold
    assert answer["threshold"] == pytest.approx(threshold, abs=0)
    assert answer["decision"] == ("anomalous" if answer["score"] >= threshold else "normal")
    assert answer["normalized_score"] == pytest.approx(min(max(answer["score"] / (2 * threshold), 0), 1), abs=1e-12)
    return result


def test_health_lists_the_served_categories_and_their_thresholds(server, workspace):
    answer = httpx.get(server + "/health", timeout=10)
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "ok" and body["categories"] == ["widget", "gadget"]
    for name in ("widget", "gadget"):
        stored = json.loads((workspace.root / name / "category.json").read_text())["decision_threshold"]
        assert body["thresholds"][name] == pytest.approx(stored, abs=0)
    assert body["max_body_bytes"] == 1024 * 1024 and body["max_in_flight"] == 6


def test_raw_bytes_multipart_and_both_category_routes_give_the_predictor_scores(server, workspace, expected):
    path = workspace.good[0]
    raw = post_image(server + "/predict/widget", path)
    assert raw.status_code == 200, raw.text
    check_answer(raw.json(), expected["widget"], path)
    query = post_image(server + "/predict", path, params={"category": "gadget"})
    assert query.status_code == 200, query.text
    check_answer(query.json(), expected["gadget"], path)
    upload = httpx.post(server + "/predict/gadget", files={"image": ("part.png", path.read_bytes(), "image/png")},
                        timeout=60)
    assert upload.status_code == 200, upload.text
    assert upload.json()["score"] == pytest.approx(query.json()["score"], abs=1e-6)
    assert raw.json()["score"] != pytest.approx(query.json()["score"], abs=1e-6)  # really two categories


def test_map_is_a_png_of_the_anomaly_map(server, workspace, expected):
    path = workspace.good[1]
    answer = post_image(server + "/predict/widget", path, params={"map": "1"})
    assert answer.status_code == 200, answer.text
    result = check_answer(answer.json(), expected["widget"], path, maps=True)
    picture = Image.open(io.BytesIO(base64.b64decode(answer.json()["anomaly_map_png"])))
    assert picture.format == "PNG" and picture.mode == "L" and picture.size == result.anomaly_map.shape[::-1]
    want = np.clip(result.anomaly_map, 0, 1) * 255
    assert np.abs(np.asarray(picture, dtype=np.float64) - want).max() <= 0.5 + 1e-3
    assert "anomaly_map_png" not in post_image(server + "/predict/widget", path).json()


def test_concurrent_clients_each_get_their_own_answer(server, workspace, expected):
    """Eight clients at once (one batch, or a few): every answer belongs to its request."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(workspace.good[i % len(workspace.good)], ("widget", "gadget")[i % 2]) for i in range(12)]
    with ThreadPoolExecutor(6) as pool:  # within the queue of 6
        answers = list(pool.map(lambda job: post_image(f"{server}/predict/{job[1]}", job[0]), jobs))
    for (path, name), answer in zip(jobs, answers):
        assert answer.status_code == 200, answer.text
        check_answer(answer.json(), expected[name], path)


# ---------------------------------------------------------------------------------------------- the gate alone
class Downstream:
    """A stand-in for LitServe's app: records what the gate forwards and answers like the worker."""

    def __init__(self, answer=None):
        self.forwarded, self.answer = [], answer or {"score": 0.25}

    async def __call__(self, scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] == "/predict":
            self.forwarded.append(json.loads(body))
        payload = json.dumps(self.answer if scope["path"] == "/predict" else "ok").encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload})


def gate_call(tmp_path, requests, categories=("widget",), answer=None, max_bytes=64):
    from anomclip_hf.serving.http_gate import ServeGate

    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"categories": list(categories), "thresholds": {}}))
    downstream = Downstream(answer)
    gate = ServeGate(downstream, catalog=str(catalog), max_bytes=max_bytes, max_in_flight=4)

    async def run():
        transport = httpx.ASGITransport(app=gate)
        async with httpx.AsyncClient(transport=transport, base_url="http://gate") as client:
            return [await client.request(**request) for request in requests]

    return asyncio.run(run()), downstream


def tiny_image_bytes(format: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), (10, 20, 30)).save(buffer, format=format)
    return buffer.getvalue()


def test_gate_defaults_to_the_only_category_and_forwards_the_image_base64(tmp_path):
    png = tiny_image_bytes("PNG")
    (answer,), downstream = gate_call(tmp_path, [dict(method="POST", url="/predict?map=yes", content=png,
                                                      headers={"content-type": "image/png"})], max_bytes=len(png))
    assert answer.status_code == 200 and answer.json() == {"score": 0.25}
    assert downstream.forwarded == [{"category": "widget", "image": base64.b64encode(png).decode(), "map": True}]


def test_gate_counts_a_streamed_body_without_content_length(tmp_path):
    async def chunks():
        for _ in range(5):
            yield b"x" * 20  # 100 bytes in all, over the limit of 64

    (answer,), downstream = gate_call(tmp_path, [dict(method="POST", url="/predict", content=chunks(),
                                                      headers={"content-type": "image/png"})])
    assert answer.status_code == 413 and "64" in answer.json()["error"] and not downstream.forwarded


def test_gate_turns_a_worker_error_body_into_its_status_and_refuses_get(tmp_path):
    jpeg = tiny_image_bytes("JPEG")
    answers, _ = gate_call(tmp_path, [dict(method="POST", url="/predict", content=jpeg,
                                           headers={"content-type": "image/jpeg"}),
                                      dict(method="GET", url="/predict")],
                           answer={"error": "cannot read image <image bytes>", "status": 400}, max_bytes=len(jpeg))
    assert [a.status_code for a in answers] == [400, 405]
    assert answers[0].json()["error"] == "cannot read image <image bytes>"



def _samples(text: str) -> dict:
    """{metric line without its value: value} of a Prometheus text exposition."""
    rows = [line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")]
    return {name: float(value) for name, value in rows}


def test_gate_metrics_count_inputs_verdicts_and_errors(tmp_path):
    png = tiny_image_bytes("PNG")
    post = dict(method="POST", url="/predict", content=png, headers={"content-type": "image/png"})
    answers, _ = gate_call(tmp_path, [post, post, dict(method="POST", url="/predict", content=b"x" * 100,
                                                       headers={"content-type": "image/png"}),
                                      dict(method="GET", url="/metrics")],
                           answer={"category": "widget", "score": 0.4, "decision": "anomalous"}, max_bytes=len(png))
    assert [a.status_code for a in answers] == [200, 200, 413, 200]
    assert answers[3].headers["content-type"].startswith("text/plain")
    samples = _samples(answers[3].text)
    assert samples['anomclip_inputs_total{source="http"}'] == 3
    assert samples['anomclip_verdicts_total{category="widget",decision="anomalous"}'] == 2
    assert samples['anomclip_errors_total{stage="request"}'] == 1
    assert samples['anomclip_latency_seconds_count{stage="verdict"}'] == 2
    assert samples['anomclip_queue_depth{source="http"}'] == 0


def test_metrics_of_a_running_server_follow_its_answers(server, workspace):
    before = _samples(httpx.get(server + "/metrics", timeout=10).text)
    answers = [post_image(f"{server}/predict/widget", path) for path in workspace.good[:2]]
    assert all(answer.status_code == 200 for answer in answers)
    after = _samples(httpx.get(server + "/metrics", timeout=10).text)
    assert after['anomclip_inputs_total{source="http"}'] - before.get('anomclip_inputs_total{source="http"}', 0) == 2
    decided = sum(value - before.get(name, 0) for name, value in after.items()
                  if name.startswith('anomclip_verdicts_total{category="widget"'))
    assert decided == 2
