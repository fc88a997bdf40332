"""The app as a Space: one workspace per browser session, and visitors never get the operator's powers (the
operator's HF_TOKEN, the server's files). Through the page handlers (no browser), with a set HF_TOKEN and the
loopback fake Hub."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from scale_setup import write_scale_workspace

from anomclip_hf.app.base import choose_base
from anomclip_hf.app.layout import PageHandlers
from anomclip_hf.app.workspace import (
    BASE_FIXED,
    OWN_TOKEN_NEEDED,
    SERVER_FILES_OFF,
    SessionTable,
    Workspace,
)
from anomclip_hf.inference.predictor import Predictor
from anomclip_hf.model.modeling_anomclip import AnomCLIPModel

pytest.importorskip("gradio")

OPERATOR_TOKEN = "hf_operator_secret_token"


@pytest.fixture(scope="module")
def line(tiny_clip, tmp_path_factory):
    """A base, adapters 'widget' and 'gadget', and 'widget' again made from gadget's prompts (same name,
    other scores), plus test images."""
    root = tmp_path_factory.mktemp("sessions")
    line = write_scale_workspace(root, tiny_clip)
    model = AnomCLIPModel.from_base(str(line.base))
    model.load_category(str(line.gadget), name="widget", activate=False)
    line.other_widget = Path(model.save_category(str(root / "other-widget"), "widget"))
    return line


def request(session: str):
    return SimpleNamespace(session_hash=session)


def page_scores(handlers: PageHandlers, session: str, images) -> list:
    scored, status, *_ = handlers.on_score([str(path) for path in images], 0.5, request(session))
    assert scored is not None, status
    return [image.score for image in scored.images]


def alone(base, adapter, images) -> list:
    model = AnomCLIPModel.from_base(str(base))
    state = model.load_category(str(adapter))
    return [result.score for result in Predictor.from_model(model, state.name).predict([str(p) for p in images])]


def test_each_session_scores_with_its_own_category(line, tmp_path):
    workspace = Workspace(choose_base(str(line.base)), str(tmp_path / "work"))
    handlers = PageHandlers(workspace)
    images = line.good[:3]
    message, *_ = handlers.on_load_adapter(str(line.widget), "", request("A"))
    assert "Loaded category 'widget'" in message, message
    first = page_scores(handlers, "A", images)
    # B loads another adapter of the same name, then scores: A still scores with its own
    message, *_ = handlers.on_load_adapter(str(line.other_widget), "", request("B"))
    assert "Loaded category 'widget'" in message, message
    b_scores = page_scores(handlers, "B", images)
    a_scores = page_scores(handlers, "A", images)
    assert a_scores == pytest.approx(alone(line.base, line.widget, images), abs=1e-6)
    assert a_scores == pytest.approx(first, abs=1e-6)
    assert b_scores == pytest.approx(alone(line.base, line.other_widget, images), abs=1e-6)
    assert max(abs(a - b) for a, b in zip(a_scores, b_scores)) > 1e-4  # really two categories
    # a third session has loaded nothing
    _, status, *_ = handlers.on_score([str(images[0])], 0.5, request("C"))
    assert "fit a category or load an adapter first" in status


def test_sessions_are_bounded_and_expire(tmp_path):
    table = SessionTable(str(tmp_path), max_sessions=3, idle_seconds=3600)
    sessions = [table.get(key) for key in "abcd"]
    assert len(table) == 3 and "a" not in table and not os.path.exists(sessions[0].folder)
    table.idle_seconds = 0.0
    table.get("e")
    assert len(table) == 1 and "e" in table


def seed_private_adapter(fake_hub, adapter: Path, repo_id: str, private: bool = True) -> None:
    files = {name: (adapter / name).read_bytes() for name in os.listdir(adapter) if (adapter / name).is_file()}
    fake_hub.put_files(repo_id, files, private=private)


@pytest.fixture
def visitor_page(line, tmp_path, fake_hub, monkeypatch):
    """The app as a Space: the operator's HF_TOKEN is set, the page is open to visitors."""
    fake_hub.token = OPERATOR_TOKEN
    monkeypatch.setenv("HF_TOKEN", OPERATOR_TOKEN)
    workspace = Workspace(choose_base(str(line.base)), str(tmp_path / "space"), allow_server_folders=False)
    return PageHandlers(workspace), workspace


def test_a_visitor_cannot_read_the_operators_private_adapter(line, fake_hub, visitor_page):
    handlers, workspace = visitor_page
    seed_private_adapter(fake_hub, line.widget, "operator/secret-widget")
    message, *_ = handlers.on_load_adapter("operator/secret-widget", "", request("visitor"))
    assert message.startswith("**Error:**") and "Loaded" not in message
    assert workspace.session("visitor").adapter is None
    with pytest.raises(ValueError, match="fit a category or load an adapter first"):
        workspace.adapter_zip(workspace.session("visitor"))
    assert OPERATOR_TOKEN not in message
    # a public repo loads with no token at all, and scores as alone
    seed_private_adapter(fake_hub, line.gadget, "someone/public-gadget", private=False)
    message, *_ = handlers.on_load_adapter("someone/public-gadget", "", request("visitor"))
    assert "Loaded category 'gadget'" in message, message
    assert page_scores(handlers, "visitor", line.good[:2]) == pytest.approx(alone(line.base, line.gadget,
                                                                                  line.good[:2]), abs=1e-6)


def test_a_visitor_cannot_push_with_the_operators_token(line, fake_hub, visitor_page):
    handlers, workspace = visitor_page
    seed_private_adapter(fake_hub, line.gadget, "someone/public-gadget", private=False)
    handlers.on_load_adapter("someone/public-gadget", "", request("visitor"))
    before = list(fake_hub.requests)
    message = handlers.on_push("operator/anomclip-gadget", "", False, request("visitor"))
    assert OWN_TOKEN_NEEDED in message
    assert fake_hub.requests == before and "operator/anomclip-gadget" not in fake_hub.repos
    message = handlers.on_push("operator/anomclip-gadget", "hf_visitor_own_token", False, request("visitor"))
    assert message.startswith("**Error:**") and "operator/anomclip-gadget" not in fake_hub.repos


def test_server_files_are_off_for_visitors_with_one_message(line, tmp_path, visitor_page, monkeypatch):
    handlers, workspace = visitor_page
    monkeypatch.chdir(line.root)  # 'widget' is a folder here, 'nothing' is not
    existing, missing = str(line.widget), str(tmp_path / "no-such-folder")
    answers = [handlers.on_load_adapter(source, "", request("v"))[0]
               for source in (existing, missing, "widget", "nothing", "./widget", "../", "~/x", existing + "/")]
    assert set(answers) == {f"**Error:** {SERVER_FILES_OFF}"}, answers
    for folder in (str(line.images), missing):
        status, *_ = handlers.on_fit([], folder, "part", "", 1, lambda *a, **k: None, request("v"))
        assert status == f"**Error:** {SERVER_FILES_OFF}"
    _, message = handlers.on_base(str(line.base))
    assert BASE_FIXED in message
    assert json.dumps(answers).count(str(tmp_path)) == 0
