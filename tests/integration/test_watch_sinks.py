"""`anomclip watch`'s service against real receivers: mosquitto (the Debian program) on a free loopback port,
an OPC UA server (asyncua) as the PLC, a loopback HTTP receiver as the webhook (failing and hanging on purpose),
and the folder sink. Each input reaches each sink once, in order, with the Predictor's own score, and every
message follows the verdict schema."""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import os
import shutil
import urllib.request

import pytest
from line_rig import (
    Mosquitto,
    Plc,
    Subscriber,
    WebhookReceiver,
    drop,
    password_file,
    tls_files,
    wait_until,
    write_line_workspace,
)

from anomclip_hf.inference.predictor import Predictor
from anomclip_hf.line.config import parse_config
from anomclip_hf.line.schema import validate
from anomclip_hf.line.service import running

pytest.importorskip("paho.mqtt")
pytest.importorskip("asyncua")
pytestmark = pytest.mark.skipif(not shutil.which("mosquitto") and not os.path.exists("/usr/sbin/mosquitto"),
                                reason="needs the mosquitto program (apt-get install mosquitto)")
WAIT = 60  # seconds for a verdict to travel on 2 busy cores


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_clip):
    return write_line_workspace(tmp_path_factory.mktemp("line"), tiny_clip)


@pytest.fixture(scope="module")
def expected(workspace):
    """The Predictor's own verdicts for the good images (what `anomclip predict` writes, same code path)."""
    predictor = Predictor.from_pretrained(str(workspace.base), str(workspace.widget))
    return predictor, {path.name: result for path, result in zip(workspace.good, predictor.predict(workspace.good))}


@pytest.fixture
def broker(tmp_path):
    server = Mosquitto(tmp_path / "mosquitto").start()
    yield server
    server.stop()


def line_config(workspace, tmp_path, sinks, **source):
    hot = tmp_path / "hot"
    hot.mkdir(exist_ok=True)
    return parse_config({"sources": [{"name": "cam1", "folder": str(hot), "base": str(workspace.base),
                                      "category": str(workspace.widget), "settle": 0.2, "poll": 0.05, **source}],
                         "sinks": sinks, "state": str(tmp_path / "state"), "drain_seconds": 20,
                         "metrics": {"port": 0}}), hot


def test_every_sink_gets_each_verdict_once_in_order(workspace, expected, tmp_path, broker, monkeypatch):
    predictor, want = expected
    monkeypatch.setenv("LINE_TEST_SECRET", "s3cret")
    plc, webhook = Plc(), WebhookReceiver(fail_first=2)
    subscriber = Subscriber(broker.port)
    sinks = [{"name": "mes", "type": "mqtt", "url": broker.url, "topic": "anomclip/{source}/{decision}"},
             {"name": "plc", "type": "opcua", "url": plc.url,
              "nodes": {"score": plc.node_ids["Score"], "decision": plc.node_ids["Decision"],
                        "count": plc.node_ids["Count"]}},
             {"name": "tickets", "type": "webhook", "url": webhook.url, "secret_env": "LINE_TEST_SECRET",
              "timeout": 5, "retries": 2},
             {"name": "files", "type": "folder", "path": str(tmp_path / "out")}]
    config, hot = line_config(workspace, tmp_path, sinks, overlays=True)
    images = workspace.good[:4]
    try:
        with running(config) as service:
            for image in images:
                drop(image, hot / ("sub" if image.parent.name == "sub" else ""))
            (hot / "broken.png").write_bytes(b"not a png at all")
            wait_until(lambda: len(webhook.accepted) == 5 and len(subscriber.messages) == 5
                       and len(plc.writes) >= 15, WAIT, "5 verdicts at every sink")
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{service.server.port}/metrics", timeout=5).read()
            health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{service.server.port}/health",
                                                       timeout=5).read())
        order = [v["input_id"] for v in subscriber.verdicts()]
        assert len(set(order)) == 5
        # the same stream, the same order, at every sink
        assert [v["input_id"] for v in webhook.verdicts()] == order
        rows = list(csv.DictReader(open(tmp_path / "out" / "scores.csv")))
        assert [row["input_id"] for row in rows] == order
        by_input = {v["input"]: v for v in subscriber.verdicts()}
        for image in images:
            name = os.path.relpath(image, workspace.images)
            verdict = by_input[name]
            validate(verdict)
            assert verdict["score"] == pytest.approx(want[image.name].score, abs=1e-6)
            assert verdict["decision"] == want[image.name].decision
            assert verdict["threshold"] == pytest.approx(predictor.threshold)
            assert verdict["model"] == {"base": str(workspace.base), "adapter": str(workspace.widget),
                                        "engine": "torch"}
            assert os.path.isfile(verdict["overlay"]) and verdict["overlay"].startswith(str(tmp_path / "out"))
        broken = by_input["broken.png"]
        validate(broken)
        assert broken["score"] is None and "broken.png" in broken["error"]
        # topics follow the template
        assert {topic for topic, _ in subscriber.messages} <= {"anomclip/cam1/anomalous", "anomclip/cam1/normal",
                                                               "anomclip/cam1/error"}
        # the webhook: 2 failures, then each verdict once, signed, keyed
        assert webhook.calls == 7
        for headers, verdict, body in webhook.accepted:
            validate(verdict)
            assert headers["Idempotency-Key"] == verdict["input_id"]
            assert headers["X-Anomclip-Signature"] == "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        # the PLC: score, decision, count per verdict, count last, 1..5
        assert [value for name, value in plc.writes if name == "Count"] == [1, 2, 3, 4, 5]
        assert plc.read("Count") == 5
        last = subscriber.verdicts()[-1]
        assert plc.read("Decision") == (last["decision"] or "error")
        assert plc.writes[-1][0] == "Count"
        # metrics and health
        text = metrics.decode()
        assert 'anomclip_inputs_total{source="cam1"} 5.0' in text
        assert 'anomclip_sink_failures_total{sink="tickets"}' in text
        assert 'anomclip_errors_total{stage="decode"} 1.0' in text
        decisions = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                        if line.startswith("anomclip_verdicts_total{"))
        assert decisions == 5
        assert health["status"] == "ok" and health["sources"]["cam1"]["status"] == "watching"
    finally:
        subscriber.close()
        webhook.close()
        plc.close()


def test_mqtt_over_tls_with_credentials_from_the_environment(workspace, tmp_path, monkeypatch):
    pytest.importorskip("cryptography")
    files = tls_files(tmp_path / "tls")
    passwords = password_file(tmp_path / "tls", "line", "pa55word")
    broker = Mosquitto(tmp_path / "mosquitto", extra=f"cafile {files['ca']}\ncertfile {files['cert']}\n"
                       f"keyfile {files['key']}\nallow_anonymous false\npassword_file {passwords}").start()
    subscriber = Subscriber(broker.port, tls_ca=files["ca"], credentials=("line", "pa55word"))
    url = f"mqtts://127.0.0.1:{broker.port}"
    try:
        monkeypatch.setenv("ANOMCLIP_MQTT_USERNAME", "line")
        monkeypatch.setenv("ANOMCLIP_MQTT_PASSWORD", "wrong")
        config, hot = line_config(workspace, tmp_path, [{"type": "mqtt", "url": url, "ca_file": str(files["ca"]),
                                                         "timeout": 2}])
        with running(config) as service:
            drop(workspace.good[0], hot, "a.png")
            wait_until(lambda: "refused" in service.health()["sinks"]["mqtt"]["status"], WAIT, "the refusal",
                       explain=lambda: str(service.health()))
            assert service.journal.backlog("mqtt") == 1 and not subscriber.messages
        monkeypatch.setenv("ANOMCLIP_MQTT_PASSWORD", "pa55word")  # fixed: the next start delivers the held verdict
        with running(config) as service:
            drop(workspace.good[1], hot, "b.png")
            wait_until(lambda: len(subscriber.messages) == 2, WAIT, "both verdicts over TLS")
        assert [v["input"] for v in subscriber.verdicts()] == ["a.png", "b.png"]
    finally:
        subscriber.close()
        broker.stop()
