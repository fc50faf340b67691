import shutil
import subprocess
import sys
import zipfile

import pytest

from dcnbench import backends as registry
from dcnbench.errors import BackendUnavailable, UsageError
from dcnbench.backends import Backend, select
from tests.conftest import ROOT


def test_builtins_are_listed():
    names = [b.name for b in registry.all_backends()]
    assert names[:13] == ["pytorch", "torchvision", "mxnet", "paddle", "onnxruntime", "openvino", "openvino-default",
                          "ext", "ext-cuda-emu", "conv2d", "roi_align", "transformers", "grid_sample"]


def test_default_selection_excludes_reference_for_verify():
    chosen, _ = select(None, [], kinds=("deformable",))
    names = [b.name for b in chosen]
    assert names[:2] == ["pytorch", "torchvision"] and "conv2d" not in names and "roi_align" not in names


def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(UsageError) as exc:
        select(["cudnn-magic"], [], kinds=("deformable",))
    assert "pytorch" in exc.value.hint and "torchvision" in exc.value.hint


def test_entry_point_backends_join_without_touching_the_cli(monkeypatch):
    class EP:
        def __init__(self, name, value, obj):
            self.name, self.value, self._obj = name, value, obj

        def load(self):
            if isinstance(self._obj, Exception):
                raise self._obj
            return self._obj

    good = Backend(name="thirdparty", description="", ops={}, dtypes={"cpu": ("float32",)}, origin="entry-point")
    eps = [EP("thirdparty", "pkg:backend", lambda: good), EP("broken", "pkg:nope", ImportError("no module pkg"))]
    monkeypatch.setattr(registry, "entry_points", lambda group: eps if group == "dcnbench.backends" else [])
    found = {b.name: b for b in registry.all_backends()}
    assert found["thirdparty"] is good
    assert "no module pkg" in found["broken"].unavailable
    with pytest.raises(BackendUnavailable, match="no module pkg"):
        select(["broken"], [], kinds=("deformable",))


def test_no_top_level_backends_module_is_installed(tmp_path):
    # From outside the source tree, only the namespaced package exists.
    code = "import importlib.util as u; import dcnbench.backends.pytorch; print(u.find_spec('backends') is None)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == "True", out.stderr


def test_wheel_maps_backends_under_dcnbench(tmp_path):
    uv = shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")  # the Makefile bootstraps it there
    out = subprocess.run([uv, "build", "--wheel", "-q", "-o", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    [wheel] = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "dcnbench/backends/pytorch.py" in names
    assert not [n for n in names if n.startswith("backends/")]
