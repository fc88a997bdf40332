"""`--base` checked before anything loads: a mistyped local folder is reported as a missing folder."""

from __future__ import annotations

import pytest

from anomclip_hf.hub import base_source
from anomclip_hf.hub.base_source import check_base


@pytest.mark.parametrize("typo", ["./models/bse", "models/bse", "models/b se", "models/a/b"])
def test_a_mistyped_local_folder_is_a_missing_folder(tmp_path, monkeypatch, typo):
    (tmp_path / "models" / "base").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(base_source, "hub_reachable", lambda *a, **k: pytest.fail("the Hub was probed"))
    with pytest.raises(ValueError, match=rf"--base {typo}: folder does not exist"):
        check_base(typo)


def test_a_hub_id_whose_owner_is_not_a_local_folder_stays_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(base_source, "hub_reachable", lambda *a, **k: False)
    with pytest.raises(ValueError, match="not in the local Hugging Face cache"):
        check_base("someorg/some-model")
