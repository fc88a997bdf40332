"""pyproject.toml ships every sub-package (a forgotten one imports in the repo but not from a wheel)."""

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "anomclip_hf").rglob("__init__.py")}
    assert on_disk <= listed, f"missing from pyproject packages: {sorted(on_disk - listed)}"
    for package, folder in config["package-dir"].items():
        assert (ROOT / folder / "__init__.py").is_file(), package


def test_one_version_read_by_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "anomclip_hf._version.__version__"}
    namespace: dict = {}
    exec((ROOT / "anomclip_hf" / "_version.py").read_text(), namespace)
    assert namespace["__version__"].count(".") == 2


def test_evaluate_is_an_optional_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [dep for dep in project["dependencies"] if dep.startswith("evaluate")]
    assert project["optional-dependencies"]["evaluate"] == ["evaluate>=0.4"]
    assert "evaluate>=0.4" in project["optional-dependencies"]["dev"]
