"""The install paths agree: environment.yml pins what pyproject.toml pins (dependencies and every
extra); torch stays pinned; `make lab` opens JupyterLab from an extra `make test` never installs;
the paths README.md and docs/ cite exist."""
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


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_environment_yml_matches_pyproject():
    """Conda users get the dependencies and every extra (dev: the tests; lab: JupyterLab)."""
    project = _project()
    wanted = set(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted |= set(extra)
    assert _conda_pip_requirements() == wanted


def test_seaborn_draws_with_the_package_and_jupyterlab_is_an_extra():
    project = _project()
    assert any(d.startswith("seaborn") for d in project["dependencies"])
    assert any(d.startswith("jupyterlab") for d in project["optional-dependencies"]["lab"])
    for name, deps in project["optional-dependencies"].items():
        if name != "lab":
            assert not any(d.startswith("jupyterlab") for d in deps), name


def _make_rule(target: str) -> list[str]:
    """The recipe lines of `target:` in the Makefile."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, l in enumerate(lines) if re.match(rf"^{re.escape(target)}\s*:", l))
    out = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        out.append(line.strip())
    return out


def test_make_lab_installs_the_lab_extra_and_make_test_does_not():
    """`make lab` runs JupyterLab from .venv on notebooks/ after installing `.[lab]` (once, behind
    a stamp); `make test`'s install step stays `.[dev]`."""
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^\.PHONY:.*\blab\b", makefile, re.M)
    assert _make_rule("lab") == ["$(PY) -m fa_nb_utils.lab $(LAB_ARGS)"]
    assert "$(PY) -m pip install -e '.[lab]'" in _make_rule("$(LAB_STAMP)")
    assert re.search(r"^lab:\s*\$\(LAB_STAMP\)", makefile, re.M)
    install = _make_rule("$(STAMP)")
    assert "$(PY) -m pip install -e '.[dev]'" in install
    assert not any("lab" in line for line in install)


def test_paths_cited_in_readme_and_docs_exist():
    """Every repository path README.md and docs/*.md put in backticks is there, and every cited
    test function (a module that moved, or a test renamed, leaves no stale pointer behind)."""
    pattern = re.compile(r"`((?:fa_nb_utils|docs|tests|benchmarks|notebooks)/[^`\s]+)`")
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for cited in pattern.findall(doc.read_text()):
            path, _, test = cited.rstrip(".,;:").partition("::")
            if any(ch in path for ch in "<>*{"):
                continue
            assert (ROOT / path).exists(), f"{doc.name} cites {path}, which does not exist"
            if test:   # tests/test_x.py::test_name: the test is there too
                assert re.search(rf"^def {re.escape(test)}\(", (ROOT / path).read_text(), re.M), \
                    f"{doc.name} cites {cited}, which does not exist"


def test_torch_is_pinned_to_2_13():
    assert "torch==2.13.*" in _project()["dependencies"]


def test_top_level_files_exist():
    for name in ("README.md", "LICENSE", "CITATION.cff", "Makefile", ".ci/run", "environment.yml",
                 "results/README.md", "notebooks", "benchmarks"):
        assert (ROOT / name).exists(), name


def test_python_dash_m_entry_points_run_without_a_runpy_warning():
    """`python -m fa_nb_utils.X` must not import X twice (runpy's 'found in sys.modules' warning)."""
    import subprocess
    import sys
    for name in ("train", "diagnose", "reproduce"):
        out = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m",
                              f"fa_nb_utils.{name}", "--help"], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, (name, out.stderr[-2000:])
        assert "RuntimeWarning" not in out.stderr and "usage:" in out.stdout


def test_importing_a_command_line_shim_fails_and_leaves_the_function_in_place():
    """`import fa_nb_utils.train` would replace the package's train() with the shim module: it
    raises an ImportError that says what to import instead, and fa_nb_utils.train stays the
    function (one fresh interpreter for the three shims)."""
    import subprocess
    import sys
    code = """if True:
        import fa_nb_utils
        for name in ("train", "diagnose", "reproduce"):
            try:
                __import__("fa_nb_utils." + name)
                print(name, "imported")
            except ImportError as exc:
                print(name, "refused:", exc)
        from fa_nb_utils import diagnose, train
        print(train.__module__, diagnose.__module__, hasattr(fa_nb_utils, "reproduce"))
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[-1] == "fa_nb_utils.trainer fa_nb_utils.protocol False"
    for line, fix in zip(lines, ("from fa_nb_utils import train",
                                 "from fa_nb_utils import diagnose",
                                 "from fa_nb_utils.paper.runner import reproduce")):
        assert line.split()[1] == "refused:" and fix in line, line


def test_a_pool_worker_spawned_by_a_command_line_reads_its_main_module():
    """A process pool started by `python -m fa_nb_utils.reproduce` (the runner trains the
    notebooks' runs together on it) spawns workers that re-read the main module by name, as
    `__mp_main__`: the shims must let that through (and run nothing)."""
    import subprocess
    import sys
    code = """if True:
        import runpy
        for name in ("train", "diagnose", "reproduce"):
            runpy.run_module("fa_nb_utils." + name, run_name="__mp_main__", alter_sys=True)
        print("ok")
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_the_package_has_no_import_cycle():
    """Module-level imports inside fa_nb_utils form a DAG (lazy imports inside functions aside)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "fa_nb_utils"
    names = {p: ".".join(p.relative_to(root.parent).with_suffix("").parts) for p in root.rglob("*.py")}
    graph = {}
    for path, mod in names.items():
        pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        if path.name == "__init__.py":
            mod = mod.rsplit(".", 1)[0] if mod.endswith("__init__") else mod
        deps = set()
        for node in ast.parse(path.read_text()).body:  # top level only
            if isinstance(node, ast.ImportFrom) and node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                deps.add(target)
                deps.update(f"{target}.{a.name}" for a in node.names)
        graph[mod.removesuffix(".__init__")] = deps
    modules = set(graph)
    graph = {m: {d for d in ds if d in modules and d != m} for m, ds in graph.items()}
    # a package's __init__ importing its own submodules is not a cycle of the code
    inits = {m for m, p in ((names[p].removesuffix(".__init__"), p) for p in names)
             if p.name == "__init__.py"}
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for d in graph[m]:
            if m in inits and d.startswith(m + "."):
                continue
            if state.get(d) == "open" and not (d in inits and m.startswith(d + ".")):
                raise AssertionError(f"import cycle: {' -> '.join(stack + [m, d])}")
            if d not in state:
                visit(d, stack + [m])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
