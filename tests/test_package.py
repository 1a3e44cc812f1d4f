"""The package's top level: its public names as before, and no torch until one of them is used, so the NumPy
reference runs where only NumPy is installed. Import checks run in fresh interpreters: this one has torch."""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import alexnet
from conftest import run_cli

REFERENCE = Path(alexnet.__file__).parent / "reference"

# Makes `import torch` (and torch.*) fail as it does where torch is not installed.
BLOCK_TORCH = """
import sys

class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, _NoTorch())
"""


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


def test_the_numpy_reference_runs_with_torch_blocked():
    result = run_python(BLOCK_TORCH + """
import numpy as np
import alexnet.reference as ref
from alexnet.reference.network import WEIGHT_SHAPES

y, _ = ref.conv_forward(np.ones((1, 1, 3, 3)), np.ones((1, 1, 3, 3)), np.zeros(1), pad=1)
assert y[0, 0, 1, 1] == 9.0 and y[0, 0, 0, 0] == 4.0, y

# The whole network, 3 classes, random float32 weights: about a second.
rng = np.random.default_rng(0)
weights = {}
for key, shape in WEIGHT_SHAPES.items():
    shape = tuple(3 if n is None else n for n in shape)
    weights[key + ".weight"] = rng.standard_normal(shape, dtype=np.float32) * 0.01
    weights[key + ".bias"] = np.zeros(shape[0], np.float32)
logits = ref.AlexNet(weights).forward(rng.standard_normal((1, 3, 227, 227), dtype=np.float32))
assert logits.shape == (1, 3) and np.isfinite(logits).all(), logits

leaked = sorted(m for m in sys.modules if m.split(".")[0] == "torch")
assert not leaked, leaked
# Only the package itself and its reference: nothing else of alexnet came along.
assert sorted(m for m in sys.modules if m.split(".")[0] == "alexnet") == [
    "alexnet", "alexnet.reference", "alexnet.reference.layers", "alexnet.reference.network"], sorted(sys.modules)
""")
    assert result.returncode == 0, result.stderr


def test_the_reference_imports_only_numpy_and_the_standard_library():
    # The run above covers the code paths it takes; this covers every import statement, in functions too.
    allowed = {"numpy", "__future__"} | set(sys.stdlib_module_names)
    for path in REFERENCE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue   # relative imports stay inside reference/
            outside = [n for n in names if n.split(".")[0] not in allowed]
            assert not outside, f"{path.relative_to(REFERENCE.parent)}:{node.lineno} imports {outside}"


def test_importing_the_package_alone_does_not_import_torch():
    result = run_python("""
import sys
import alexnet
assert alexnet.__version__ == "0.1.0"
leaked = sorted(m for m in sys.modules if m.split(".")[0] == "torch")
assert not leaked, leaked
""")
    assert result.returncode == 0, result.stderr


def test_commands_that_compile_nothing_do_not_import_the_compiler():
    # torch._dynamo's import is a second of every command's start (torch.compile and optimisers import it).
    result = run_python("""
import sys
import alexnet.cli, alexnet.predict, alexnet.evaluate, alexnet.features, alexnet.data.prepare, alexnet.viz
assert "torch" in sys.modules and "torch._dynamo" not in sys.modules
""")
    assert result.returncode == 0, result.stderr


def test_the_public_names_are_the_modules_own():
    from alexnet import AlexNet, LocalResponseNorm, summarize
    from alexnet.lrn import LocalResponseNorm as lrn_module_class
    from alexnet.model import AlexNet as model_class
    from alexnet.summary import summarize as summary_function

    assert (AlexNet, LocalResponseNorm, summarize) == (model_class, lrn_module_class, summary_function)
    assert alexnet.AlexNet is model_class
    assert alexnet.__all__ == ["AlexNet", "LocalResponseNorm", "LRN_CONVENTIONS", "VARIANTS", "INPUT_SIZE",
                               "summarize", "format_summary"]
    assert all(getattr(alexnet, name) is not None for name in alexnet.__all__)
    assert set(alexnet.__all__) | {"__version__"} <= set(dir(alexnet))
    model = alexnet.AlexNet("owt", num_classes=3)
    assert model.num_classes == 3


def test_star_import_and_submodules_still_resolve():
    result = run_python("""
from alexnet import *
from alexnet import kernels, lrn
assert AlexNet.__module__ == "alexnet.model" and format_summary.__module__ == "alexnet.summary"
assert sorted(LRN_CONVENTIONS) == ["caffe", "cuda-convnet", "paper"] and lrn.LRN_CONVENTIONS is LRN_CONVENTIONS
assert kernels.__name__ == "alexnet.kernels"
""")
    assert result.returncode == 0, result.stderr


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        alexnet.no_such_name  # noqa: B018


def test_the_command_still_starts():
    result = run_cli("--help", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "usage: alexnet" in result.stdout
    result = run_cli("--version", timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == f"alexnet {alexnet.__version__}", result
