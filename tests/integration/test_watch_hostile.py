"""The line service under hostile conditions, with real components: a broker unreachable at start, a webhook
that hangs, a hot folder that vanishes and comes back, a file written slowly, and a generated video as the
camera stand-in, whose frame verdicts equal the Predictor's scores of the same frames."""

from __future__ import annotations

import csv
import os
import shutil
import socket
import time

import pytest
from line_rig import Mosquitto, Plc, Subscriber, WebhookReceiver, drop, fixed_port, wait_until, write_line_workspace
from line_video import write_video

from anomclip_hf.inference.predictor import Predictor
from anomclip_hf.line.config import parse_config
from anomclip_hf.line.schema import validate
from anomclip_hf.line.service import LineService, running

pytest.importorskip("paho.mqtt")
WAIT = 60


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_clip):
    return write_line_workspace(tmp_path_factory.mktemp("hostile-line"), tiny_clip)


def folder_config(workspace, tmp_path, sinks, **source):
    hot = tmp_path / "hot"
    hot.mkdir(exist_ok=True)
    return parse_config({"sources": [{"name": "cam1", "folder": str(hot), "base": str(workspace.base),
                                      "category": str(workspace.widget), "settle": 0.3, "poll": 0.05, **source}],
                         "sinks": sinks, "state": str(tmp_path / "state"), "drain_seconds": 10,
                         "metrics": False}), hot


@pytest.mark.skipif(not os.path.exists("/usr/sbin/mosquitto"), reason="needs mosquitto (apt-get)")
def test_a_broker_unreachable_at_start_gets_the_held_verdicts_in_order(workspace, tmp_path):
    broker = Mosquitto(tmp_path / "mosquitto").start()
    subscriber = Subscriber(broker.port)  # a persistent session: it keeps its subscription across the outage
    broker.stop()
    config, hot = folder_config(workspace, tmp_path, [{"type": "mqtt", "url": broker.url, "timeout": 1}])
    try:
        with running(config) as service:
            for index, image in enumerate(workspace.good[:3]):
                drop(image, hot, f"{index}.png")
            wait_until(lambda: service.journal.backlog("mqtt") == 3, WAIT, "3 verdicts held")
            assert service.health()["sinks"]["mqtt"]["status"].startswith("failing")
            assert service.metrics.sink_failures.labels(sink="mqtt")._value.get() >= 1
            broker.start()
            wait_until(lambda: len(subscriber.messages) == 3, WAIT, "the catch-up",
                       explain=lambda: f"{service.health()}, received {subscriber.messages}\n{broker.log()}")
            assert service.journal.backlog("mqtt") == 0
        assert [v["input"] for v in subscriber.verdicts()] == ["0.png", "1.png", "2.png"]
        for message in subscriber.verdicts():
            validate(message)
    finally:
        subscriber.close()
        broker.stop()


def test_a_plc_that_is_gone_gets_the_held_verdicts_with_their_counts(workspace, tmp_path):
    pytest.importorskip("asyncua")
    port = fixed_port()  # the PLC comes up on it later
    nodes = {role: f"ns=2;s=Line1.{name}" for role, name in (("score", "Score"), ("decision", "Decision"),
                                                              ("count", "Count"))}
    config, hot = folder_config(workspace, tmp_path, [{"name": "plc", "type": "opcua",
                                                       "url": f"opc.tcp://127.0.0.1:{port}/plc", "nodes": nodes,
                                                       "timeout": 2}])
    plc = None
    try:
        with running(config) as service:
            for index, image in enumerate(workspace.good[:3]):
                drop(image, hot, f"{index}.png")
            wait_until(lambda: service.journal.backlog("plc") == 3, WAIT, "3 verdicts held")
            assert service.health()["sinks"]["plc"]["status"].startswith("failing")
            plc = Plc(port)  # the PLC comes (back) up
            assert plc.node_ids["Count"] == nodes["count"]
            wait_until(lambda: service.journal.backlog("plc") == 0, WAIT, "the catch-up")
        assert [value for name, value in plc.writes if name == "Count"] == [1, 2, 3]
        scores = [value for name, value in plc.writes if name == "Score"]
        assert len(scores) == 3 and plc.read("Score") == pytest.approx(scores[-1]) and plc.read("Count") == 3
    finally:
        if plc is not None:
            plc.close()


def test_a_hanging_webhook_costs_its_timeout_and_nothing_is_lost(workspace, tmp_path):
    webhook = WebhookReceiver(hang_first=1, hang_seconds=4)
    config, hot = folder_config(workspace, tmp_path, [{"name": "hook", "type": "webhook", "url": webhook.url,
                                                       "timeout": 0.5, "retries": 1}])
    try:
        with running(config) as service:
            drop(workspace.good[0], hot, "a.png")
            wait_until(lambda: service.metrics.sink_failures.labels(sink="hook")._value.get() == 1, WAIT,
                       "the timed-out attempt")
            started = time.monotonic()
            wait_until(lambda: service.journal.backlog("hook") == 0, WAIT, "the delivery after the hang")
            assert time.monotonic() - started < 3.5  # the back-off and a retry, not the 4 s hang
        # the hung request was still answered later: the receiver saw the same verdict twice, same key
        wait_until(lambda: len(webhook.accepted) == 2, 10, "the late answer")
        (first, _, body1), (second, _, body2) = webhook.accepted
        assert first["Idempotency-Key"] == second["Idempotency-Key"] and body1 == body2
    finally:
        webhook.close()


def test_a_vanishing_folder_and_a_slow_writer(workspace, tmp_path):
    config, hot = folder_config(workspace, tmp_path, [{"type": "folder", "path": str(tmp_path / "out")}])
    with running(config) as service:
        drop(workspace.good[0], hot, "a.png")
        wait_until(lambda: service.scorer.scored == 1, WAIT, "a first verdict")
        shutil.rmtree(hot)
        wait_until(lambda: service.health()["sources"]["cam1"]["status"] == "folder missing", 10, "the folder gone")
        assert service.metrics.errors.labels(stage="source")._value.get() == 1
        hot.mkdir()
        data = workspace.good[1].read_bytes()
        with open(hot / "slow.png", "wb") as handle:  # written in pieces, each within the settle time
            for start in range(0, len(data), max(1, len(data) // 5)):
                handle.write(data[start:start + max(1, len(data) // 5)])
                handle.flush()
                time.sleep(0.1)
        wait_until(lambda: service.scorer.scored == 2, WAIT, "the slow file")
        time.sleep(0.5)
        assert service.scorer.scored == 2
    rows = list(csv.DictReader(open(tmp_path / "out" / "scores.csv")))
    assert [row["path"] for row in rows] == ["a.png", "slow.png"] and all(not row["error"] for row in rows)


def test_a_video_as_the_camera_stand_in(workspace, tmp_path):
    video = tmp_path / "camera.avi"
    frames = write_video(video, frames=10, fps=10.0)
    config = parse_config({"sources": [{"name": "cam", "video": str(video), "base": str(workspace.base),
                                        "category": str(workspace.gadget), "fps": 5, "batch_size": 4}],
                           "sinks": [{"type": "folder", "path": str(tmp_path / "out")}],
                           "state": str(tmp_path / "state"), "metrics": False})
    assert LineService(config).run(install_signals=False) == 0  # a finite source: it stops at the end
    rows = list(csv.DictReader(open(tmp_path / "out" / "scores.csv")))
    assert [row["path"] for row in rows] == ["frame:0", "frame:2", "frame:4", "frame:6", "frame:8"]
    predictor = Predictor.from_pretrained(str(workspace.base), str(workspace.gadget))
    want = predictor.predict([frames[i] for i in (0, 2, 4, 6, 8)])
    assert [float(row["image_score"]) for row in rows] == pytest.approx([p.score for p in want], abs=1e-6)
    assert [row["category"] for row in rows] == ["gadget"] * 5


def test_watch_with_a_config_file_runs_a_video_to_its_end(workspace, tmp_path, capsys):
    import signal

    import yaml

    from anomclip_hf.cli import main

    video = tmp_path / "camera.avi"
    write_video(video, frames=6, fps=10.0)
    config = tmp_path / "line.yaml"
    config.write_text(yaml.safe_dump({"sources": [{"name": "cam", "video": str(video), "base": str(workspace.base),
                                                   "category": str(workspace.widget)}],
                                      "sinks": [{"type": "folder", "path": str(tmp_path / "out")}],
                                      "state": str(tmp_path / "state"), "metrics": {"port": 0}}))
    handler = signal.getsignal(signal.SIGTERM)
    assert main(["watch", "--config", str(config)]) == 0  # a finite source: it stops by itself, exit 0
    assert signal.getsignal(signal.SIGTERM) is handler  # the service gave the handlers back
    out = capsys.readouterr()
    assert "watching cam -> folder" in out.out and "6 input(s) scored" in out.err
    rows = list(csv.DictReader(open(tmp_path / "out" / "scores.csv")))
    assert [row["path"] for row in rows] == [f"frame:{i}" for i in range(6)]
    # a port in use is one line naming the field
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config.write_text(config.read_text().replace("port: 0", f"port: {busy.getsockname()[1]}"))
        assert main(["watch", "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("anomclip watch: error: metrics.port: cannot listen on") and error.count("\n") == 1
