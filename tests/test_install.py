"""What the package asks for and what `make` installs: ranges for everyone's environment, exact versions
(constraints.txt) for .venv."""

import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")   # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pairs = [line.split("#")[0].strip().split("==") for line in lines if line.split("#")[0].strip()]
    return {name.strip(): version.strip() for name, version in pairs}


def test_the_exact_versions_lie_inside_the_ranges_the_package_declares():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {r.name: r for r in map(Requirement, project["dependencies"])}
    assert set(pins()) == {"torch", "torchvision"}
    for name, version in pins().items():
        assert version in declared[name].specifier, (name, version, declared[name])
        # A lower bound, never an exact version: `pip install .` must keep a user's own torch.
        assert all(spec.operator == ">=" for spec in declared[name].specifier), declared[name]


@pytest.mark.skipif(Path(sys.prefix).resolve() != (ROOT / ".venv").resolve(), reason="checks the .venv make built")
def test_make_installed_exactly_the_pinned_versions():
    for name, version in pins().items():
        assert metadata.version(name).split("+")[0] == version, name
