"""The installed layout: callbacks/ installs as crrelu_lightning.callbacks and every subpackage is listed."""
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(conf["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "crrelu_lightning").rglob("__init__.py")}
    on_disk.add("crrelu_lightning.callbacks")
    assert on_disk == listed, f"pyproject.toml [tool.setuptools] packages differ from the tree: {on_disk ^ listed}"
    assert conf["package-dir"]["crrelu_lightning.callbacks"] == "callbacks"


def test_user_callbacks_py_does_not_shadow_the_package(tmp_path):
    (tmp_path / "callbacks.py").write_text("raise RuntimeError('user callbacks.py was imported')\n")
    code = (
        "import crrelu_lightning.callbacks as c, crrelu_lightning.callbacks.entropy_monitor as m;"
        "assert c.ActivationEntropyMonitor is m.ActivationEntropyMonitor;"
        "from crrelu_lightning.callbacks import EAFOCallback; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
