import textwrap

import pytest

from dcnbench.errors import PluginError
from dcnbench.plugins import load_plugin, parse_impl
from tests.conftest import PLANTED

SIGNATURE = "input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None"


def _plugin(tmp_path, body: str, name="k.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def test_parse_impl_with_and_without_name():
    assert parse_impl("k.py:f")[0] is None
    name, path, func = parse_impl("mine=dir/k.py:f")
    assert (name, str(path), func) == ("mine", "dir/k.py", "f")
    with pytest.raises(PluginError, match="malformed"):
        parse_impl("k.py")


def test_name_defaults_to_function_and_dtypes_attribute_is_honoured():
    assert load_plugin(f"{PLANTED}:swapped_offsets").name == "swapped_offsets"
    b = load_plugin(f"custom={PLANTED}:swapped_offsets")
    assert b.name == "custom" and "bfloat16" not in b.dtypes["cpu"]


@pytest.mark.parametrize("body, message", [
    ("import no_such_module_xyz\n", "does not import: ModuleNotFoundError"),
    ("def f(:\n", "does not import: SyntaxError"),
    ("g = 1\n", "has no 'f'"),
    ("f = 3\n", "not callable"),
    (f"def f({SIGNATURE}):\n    raise ValueError('unsupported layout')\n", "raised ValueError: unsupported layout"),
    (f"def f({SIGNATURE}):\n    return input\n", "returned shape"),
    (f"import torch\ndef f({SIGNATURE}):\n    return torch.full((1, 3, 5, 6), float('nan'))\n", "NaN"),
    (f"def f({SIGNATURE}):\n    return 1.0\n", "expected a torch.Tensor"),
])
def test_broken_plugins_are_plugin_errors(tmp_path, body, message):
    path = _plugin(tmp_path, body)
    with pytest.raises(PluginError, match=message.replace("(", r"\(")):
        load_plugin(f"{path}:f")


def test_missing_file(tmp_path):
    with pytest.raises(PluginError, match="does not exist"):
        load_plugin(f"{tmp_path}/nope.py:f")


def test_a_plugin_may_import_its_siblings(tmp_path):
    _plugin(tmp_path, "from torchvision.ops import deform_conv2d as impl\n", name="helper_mod_abc.py")
    path = _plugin(tmp_path, "from helper_mod_abc import impl as f\n")
    assert load_plugin(f"{path}:f").name == "f"


def test_v1_only_plugin_passes_the_probe(tmp_path):
    path = _plugin(tmp_path, f"""
        from torchvision.ops import deform_conv2d
        def f({SIGNATURE}):
            if mask is not None:
                raise NotImplementedError("DCNv1 only")
            return deform_conv2d(input, offset, weight, bias, stride, padding, dilation)
    """)
    assert load_plugin(f"{path}:f").name == "f"
