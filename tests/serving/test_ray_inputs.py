"""`predict --engine ray`: an unreachable cluster fails in seconds naming its address; a file name that is not
UTF-8 becomes an errors.csv row (as the local engine reports it) and the other files are scored."""

from __future__ import annotations

import csv
import os
import socket
import time

import pytest

from anomclip_hf.inference.predictor import PredictorSpec

pytest.importorskip("ray")

from anomclip_hf.serving.ray_engine import (  # noqa: E402
    NOT_UTF8,
    ClusterUnreachableError,
    cluster_endpoint,
    predict_with_ray,
)


def _closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_cluster_addresses_parse_and_bad_ones_are_refused():
    assert cluster_endpoint(None) is None and cluster_endpoint("auto") is None
    assert cluster_endpoint("ray://head.example:10001") == ("head.example", 10001)
    assert cluster_endpoint("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert cluster_endpoint("ray://[::1]:10001") == ("::1", 10001)
    for bad in ("head-without-port", "ray://head:port", "ray://head:70000"):
        with pytest.raises(ValueError, match="expected auto, HOST:PORT or ray://HOST:PORT"):
            cluster_endpoint(bad)


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_an_unreachable_cluster_fails_within_seconds_naming_it(tmp_path, scheme):
    import ray

    assert not ray.is_initialized()
    address = f"{scheme}127.0.0.1:{_closed_port()}"
    spec = PredictorSpec(base=str(tmp_path / "base"), category=str(tmp_path / "adapter"))
    began = time.perf_counter()
    with pytest.raises(ClusterUnreachableError, match=rf"Ray cluster at {address} is unreachable"):
        predict_with_ray(spec, [str(tmp_path / "a.png")], str(tmp_path / "out"), address=address)
    assert time.perf_counter() - began < 10
    assert not ray.is_initialized() and not (tmp_path / "out").exists()


def test_a_name_that_is_not_utf8_is_an_error_row_and_the_run_goes_on(tmp_path, tiny_clip):
    import ray
    from scale_setup import write_scale_workspace

    workspace = write_scale_workspace(tmp_path / "ws", tiny_clip)
    good = [str(path) for path in workspace.good[:3]]
    odd = os.path.join(os.fsencode(str(workspace.images)), b"caf\xe9.png")
    with open(odd, "wb") as handle:
        handle.write(open(good[0], "rb").read())
    odd = os.fsdecode(odd)  # as os.walk gives it: the byte 0xE9 kept as a lone surrogate
    spec = PredictorSpec(base=str(workspace.base), category=str(workspace.widget))
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join([os.path.dirname(tests), os.path.join(tests, "helpers"), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=100 * 1024 * 1024,
             runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}})
    try:
        result = predict_with_ray(spec, [good[0], odd, *good[1:]], str(tmp_path / "out"), actors=1, batch_size=2,
                                  root=str(workspace.images), output_format="csv")
    finally:
        ray.shutdown()
    assert list(result.scores) == good
    assert result.failures == [(odd, NOT_UTF8)]
    with open(tmp_path / "out" / "errors.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[1] == [os.fsencode(odd).decode("utf-8", "backslashreplace"), NOT_UTF8]
    assert "caf\\xe9.png" in rows[1][0]
