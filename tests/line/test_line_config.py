"""Settings of `anomclip watch`: each misconfigured source or sink is one line naming the field, from a
line.yaml or from the flags, before anything loads."""

from __future__ import annotations

import pytest
import yaml

from anomclip_hf.cli import main
from anomclip_hf.line.config import LineConfigError, load_config, parse_config


@pytest.fixture
def hot(tmp_path):
    folder = tmp_path / "hot"
    folder.mkdir()
    return folder


def config(hot, source=None, sink=None, **top):
    raw = {"sources": [{"name": "cam1", "folder": str(hot), "base": "b", "category": "c", **(source or {})}],
           "sinks": [{"type": "mqtt", "url": "mqtt://127.0.0.1:1883", **(sink or {})}], **top}
    return parse_config(raw)


def test_a_good_config_with_defaults(hot):
    parsed = config(hot)
    assert parsed.sources[0].kind == "folder" and parsed.sources[0].settle == 0.5
    assert parsed.sinks[0].topic == "anomclip/{source}/{category}" and parsed.sinks[0].qos == 1
    assert parsed.metrics_port == 9400


@pytest.mark.parametrize("source, sink, top, field", [
    ({"folder": "/no/such/folder"}, None, {}, "sources[0].folder"),
    ({"settle": -1}, None, {}, "sources[0].settle"),
    ({"fps": 0}, None, {}, "sources[0].fps"),
    ({"threshold": 0}, None, {}, "sources[0].threshold"),
    ({"base": None}, None, {}, "sources[0].base"),
    ({"colour": "red"}, None, {}, "sources[0].colour"),
    ({"video": "x.mp4"}, None, {}, "sources[0]"),
    (None, {"url": "http://broker"}, {}, "sinks[0].url"),
    (None, {"topic": "anomclip/{line}"}, {}, "sinks[0].topic"),
    (None, {"topic": "anomclip/#"}, {}, "sinks[0].topic"),
    (None, {"qos": 0}, {}, "sinks[0].qos"),
    (None, {"type": "kafka"}, {}, "sinks[0].type"),
    (None, {"type": "opcua", "url": "opc.tcp://plc:4840"}, {}, "sinks[0].nodes"),
    (None, {"type": "opcua", "url": "opc.tcp://plc:4840", "nodes": {"speed": "ns=2;s=S"}}, {}, "sinks[0].nodes.speed"),
    (None, {"type": "webhook", "url": "ftp://x"}, {}, "sinks[0].url"),
    (None, {"type": "webhook", "url": "http://x", "secret_env": "LINE_NO_SUCH_VARIABLE"}, {}, "sinks[0].secret_env"),
    (None, {"type": "webhook", "url": "http://x", "timeout": 0}, {}, "sinks[0].timeout"),
    (None, None, {"metrics": {"port": 70000}}, "metrics.port"),
])
def test_a_wrong_setting_names_its_field(hot, source, sink, top, field):
    with pytest.raises(LineConfigError) as caught:
        config(hot, source, sink, **top)
    assert str(caught.value).startswith(field), str(caught.value)


def test_duplicate_names_and_empty_lists(hot):
    with pytest.raises(LineConfigError, match=r"^sinks\[1\].name: 'mqtt' is used twice"):
        parse_config({"sources": [{"folder": str(hot), "base": "b", "category": "c"}],
                      "sinks": [{"type": "mqtt", "url": "mqtt://h"}, {"type": "mqtt", "url": "mqtt://h"}]})
    with pytest.raises(LineConfigError, match=r"sinks: expected a list"):
        parse_config({"sources": [{"folder": str(hot), "base": "b", "category": "c"}], "sinks": []})


def test_a_yaml_file_and_its_errors(hot, tmp_path):
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump({"sources": [{"name": "a", "folder": str(hot), "base": "b", "category": "c"},
                                                {"name": "b", "folder": str(hot), "base": "b", "category": "d",
                                                 "move_to": "done"}],
                                    "sinks": [{"type": "folder", "path": str(tmp_path / "out")}],
                                    "state": str(tmp_path / "state"), "metrics": False}))
    parsed = load_config(str(path))
    assert [s.name for s in parsed.sources] == ["a", "b"] and parsed.metrics_port is None
    path.write_text("sources: [\n")
    with pytest.raises(LineConfigError, match="not valid YAML"):
        load_config(str(path))


@pytest.mark.parametrize("argv, words", [
    (["--folder", "HOT", "--mqtt-url", "tcp://x"], "sinks[0].url"),
    (["--folder", "HOT"], "name a sink"),
    (["--mqtt-url", "mqtt://h"], "name one source"),
    (["--folder", "HOT", "--opcua-url", "opc.tcp://h:4840", "--opcua-node", "score"], "--opcua-node"),
    (["--config", "line.yaml", "--folder", "HOT"], "drop --folder"),
])
def test_the_command_line_says_it_in_one_line(hot, capsys, argv, words):
    argv = [arg.replace("HOT", str(hot)) for arg in argv]
    assert main(["watch", "--base", "b", "--category", "c", *argv] if "--config" not in argv else ["watch", *argv]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("anomclip watch: error: ") and words in error and "\n" not in error
