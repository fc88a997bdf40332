"""Hostile input at serve, Ray and accelerate: each bad input is its own 4xx or error row, the rest is scored."""

from __future__ import annotations

import pytest


# Hostile input at the new entry points: the server answers each bad request with its 4xx (or 503 for a burst
# beyond its queue), never a 500, and keeps serving; Ray and accelerate turn a corrupt image into an error row
# and score the rest. The server, the Ray cluster and the launch come from test_serve.py and
# test_scale.py beside this file (imported inside the fixtures, so this file needs neither extra to collect).
_PNG_TYPE = {"content-type": "image/png"}


@pytest.fixture(scope="module")
def scale_workspace(tiny_clip, tmp_path_factory):
    from scale_setup import write_scale_workspace

    return write_scale_workspace(tmp_path_factory.mktemp("hostile-scale"), tiny_clip)


@pytest.fixture(scope="module")
def hostile_server(scale_workspace):
    pytest.importorskip("litserve")
    from test_serve import start_server

    # A request holds a queue slot from its last body byte to its answer: the half-second batch window keeps a
    # burst of 16 in the queue long enough for the bound of 3 to shed some, however fast the tiny model scores.
    with start_server(scale_workspace, "--max-queue", "3", "--max-mb", "1", "--batch-timeout", "0.5") as url:
        yield url


def _serve_rows(workspace):
    good = workspace.good[0].read_bytes()
    return {
        "oversize_body": (dict(url="/predict/widget", content=b"\0" * (1024 * 1024 + 1), headers=_PNG_TYPE), 413,
                          "over the limit of 1,048,576 bytes"),
        "wrong_content_type": (dict(url="/predict/widget", content=good, headers={"content-type": "text/plain"}), 415,
                               "'text/plain' is not accepted"),
        "json_content_type": (dict(url="/predict/widget", json={"image": "x"}), 415, "'application/json'"),
        "unknown_category": (dict(url="/predict/bolt", content=good, headers=_PNG_TYPE), 404,
                             "unknown category 'bolt'; served: widget, gadget"),
        "unknown_category_query": (dict(url="/predict?category=bolt", content=good, headers=_PNG_TYPE), 404,
                                   "unknown category 'bolt'"),
        "no_category_of_several": (dict(url="/predict", content=good, headers=_PNG_TYPE), 400,
                                   "several categories are served"),
        "corrupt_image": (dict(url="/predict/widget", content=b"\x89PNG\r\n\x1a\n garbage", headers=_PNG_TYPE), 400,
                          "cannot read image <image bytes>"),
        "truncated_png": (dict(url="/predict/widget", content=good[: len(good) // 2], headers=_PNG_TYPE), 400,
                          "cannot read image <image bytes>"),
        "empty_body": (dict(url="/predict/widget", content=b"", headers=_PNG_TYPE), 400, "no image bytes"),
        "multipart_without_file": (dict(url="/predict/widget", data={"note": "no file"},
                                        files={"other": ("", b"", "")}), 400, "no file part"),
    }


@pytest.mark.parametrize("row", ["oversize_body", "wrong_content_type", "json_content_type", "unknown_category",
                                 "unknown_category_query", "no_category_of_several", "corrupt_image", "truncated_png",
                                 "empty_body", "multipart_without_file"])
def test_serve_answers_a_bad_request_with_its_4xx_and_stays_up(row, hostile_server, scale_workspace):
    import httpx

    request, status, message = _serve_rows(scale_workspace)[row]
    request["url"] = hostile_server + request["url"]
    answer = httpx.post(timeout=60, **request)
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["status"] == status and message in body["error"] and "Traceback" not in answer.text
    assert httpx.get(hostile_server + "/health", timeout=10).status_code == 200
    good = httpx.post(hostile_server + "/predict/widget", content=scale_workspace.good[1].read_bytes(),
                      headers=_PNG_TYPE, timeout=60)
    assert good.status_code == 200 and good.json()["decision"] in ("normal", "anomalous")


def test_serve_sheds_a_burst_beyond_its_queue_with_503_and_recovers(hostile_server, scale_workspace):
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    image = scale_workspace.good[2].read_bytes()

    def post(_):
        return httpx.post(hostile_server + "/predict/gadget", content=image, headers=_PNG_TYPE, timeout=60)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(post, range(32)))
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 503} and statuses.count(503) >= 1 and statuses.count(200) >= 3
    shed = next(a for a in answers if a.status_code == 503)
    assert shed.headers["retry-after"] == "1" and "queue holds 3" in shed.json()["error"]
    scores = [a.json()["score"] for a in answers if a.status_code == 200]
    assert max(scores) - min(scores) < 1e-6  # one image, one score (batches of any size)
    assert post(0).status_code == 200


def test_ray_turns_corrupt_image_bytes_into_error_rows_and_scores_the_rest(scale_workspace):
    import math

    pytest.importorskip("ray")
    from test_scale import local_ray_cluster

    from anomclip_hf.inference.predictor import PredictorSpec
    from anomclip_hf.serving.ray_engine import score_dataset

    good = scale_workspace.good[0].read_bytes()
    items = [good, b"\x89PNG\r\n\x1a\n garbage", good[: len(good) // 2], b"", scale_workspace.good[3].read_bytes()]
    spec = PredictorSpec(base=str(scale_workspace.base), category=str(scale_workspace.widget))
    with local_ray_cluster() as ray:
        dataset = ray.data.from_items([{"key": i, "bytes": item} for i, item in enumerate(items)])
        rows = sorted(score_dataset(dataset, spec, actors=2, batch_size=2).take_all(), key=lambda row: row["key"])
    assert [row["key"] for row in rows] == list(range(len(items)))  # each input once, none lost
    errors = [row["error"] for row in rows]
    assert [bool(e) for e in errors] == [False, True, True, True, False]
    assert "cannot read image <image bytes>" in errors[1] and "no image data" in errors[3]
    expected = PredictorSpec(**{**spec.__dict__}).build().predict([items[0], items[4]])
    assert abs(rows[0]["image_score"] - expected[0].score) < 1e-6
    assert abs(rows[4]["image_score"] - expected[1].score) < 1e-6
    assert all(math.isnan(rows[i]["image_score"]) and rows[i]["decision"] == "" for i in (1, 2, 3))


def test_accelerate_launch_reports_a_corrupt_image_and_scores_the_rest(scale_workspace, tmp_path):
    import csv

    from test_scale import launch_predict

    done = launch_predict(scale_workspace, tmp_path / "out")  # the folder holds broken.png and notes.txt
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "out" / "scores.csv", newline="", encoding="utf-8") as handle:
        scored = [row["path"] for row in csv.DictReader(handle)]
    assert sorted(scored) == sorted(str(p) for p in scale_workspace.good)
    with open(tmp_path / "out" / "errors.csv", newline="", encoding="utf-8") as handle:
        errors = {row["path"]: row["error"] for row in csv.DictReader(handle)}
    assert set(errors) == {str(scale_workspace.broken), str(scale_workspace.images / "notes.txt")}
    assert "cannot read image file" in errors[str(scale_workspace.broken)]


