"""The install paths agree: environment.yml pins what pyproject.toml pins; torch stays pinned."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _conda_pip_requirements() -> set[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, l in enumerate(lines) if l.strip() == "- pip:")
    reqs = set()
    for line in lines[start + 1:]:
        m = re.match(r"^\s+- (.+)$", line)
        if not m:
            break
        if not m.group(1).startswith("-e"):
            reqs.add(m.group(1).strip())
    return reqs


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    assert _conda_pip_requirements() == wanted


def test_torch_is_pinned_to_2_13():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "torch==2.13.*" in project["dependencies"]


def test_top_level_files_exist():
    for name in ("README.md", "LICENSE", "CITATION.cff", "Makefile", ".ci/run", "environment.yml",
                 "results/README.md", "notebooks", "benchmarks"):
        assert (ROOT / name).exists(), name
