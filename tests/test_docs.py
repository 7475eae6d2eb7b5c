"""The docs say what the code does: README.md, docs/*.md and results/README.md against the package.

**Facts** (fast). What the docs take from the code is compared with the code itself: the audit
table's column count (from the CSV the package writes), the report's schema versions, the rules'
options and their defaults, the diagnostics' thresholds (tables and prose), every flag (and
listed choice) of every command line and make target the docs write, the package layout, the
notebooks' output files, that every backticked snake_case name exists in the package, the
benchmarks or the notebooks, that every keyword passed to the package's functions is one of
their parameters, that every cited `tests/...[::test]` exists, and that the tiny profile's time
is stated once. The command lines' flags come from their `--help` (cli.py builds the parsers
inside train_main, diagnose_main and reproduce_main).

**Blocks.** Every ```python block of README.md and docs/*.md runs, with this convention:
- one namespace per file, its blocks in file order, as a reader typing them; the blocks run in a
  temporary folder;
- the namespace starts with what the docs call the reader's own: `result` (a DFA run of the
  shrunk `train` below, checkpointed under ./results/runs), `model` (its network), `x_test` and
  `y_test` (its 1,280 test images and labels) and `my_credits` (x, y -> its rule's credits);
- a few blocks assume one more thing the text has just described (a batch of tokens, the rows
  of a log); `SETUP` prepares it, keyed by a line of the block, and `AFTER` checks what a block
  cannot fail on by itself; each key must match exactly one block;
- `train(...)` is `fa_nb_utils.train` with tiny sizes (`tiny_train`): the ResMLP's d_hidden and
  num_blocks, the data (the synthetic set in CIFAR-10's format, since CIFAR-10 cannot be
  downloaded here, 128 training images) and at most 2 epochs; the rest of the block's config
  (rule, options, seed, monitor, ...) is kept;
- `<run>` in a path is the fixture run's folder;
- a block whose lines start with `>>> ` is a doctest: its printed output is compared;
- a block that cannot run here has `<!-- not run by tests/test_docs.py: REASON -->` on the line
  directly above its fence, with a reason;
- bash and latex blocks are not run; the facts above check their commands' flags.
"""
from __future__ import annotations

import ast
import contextlib
import csv
import dataclasses
import doctest
import io
import json
import math
import re
import sys
import types
from pathlib import Path

import pytest
import torch

import fa_nb_utils
from fa_nb_utils import cli, trainer
from fa_nb_utils.diagnostics import ABOVE, BUILTIN_KEYS, DIAGNOSTICS
from fa_nb_utils.report import READABLE_SCHEMAS, SCHEMA_VERSION, DiagnosticThresholds
from fa_nb_utils.rules import RULES

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "results" / "README.md"]
RUNNABLE_DOCS = [p for p in DOCS if p.parent != ROOT / "results"]
NOT_RUN = re.compile(r"^<!--\s*not run by tests/test_docs\.py:(?P<reason>.*?)-->\s*$")


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# ---------------------------------------------------------------------------------------------
# Reading markdown: fenced blocks, prose without them, inline code, tables
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Block:
    path: Path
    line: int            # the opening fence's line, 1-based
    lang: str
    code: str            # dedented to the fence's indentation
    above: str           # the line directly above the fence

    @property
    def where(self) -> str:
        return f"{rel(self.path)}:{self.line}"


FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)\s*$")


def blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, j = m["indent"], i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        code = "\n".join(l[len(indent):] if l.startswith(indent) else l.lstrip()
                         for l in lines[i + 1:j])
        out.append(Block(path, i + 1, m["lang"], code, lines[i - 1].strip() if i else ""))
        i = j + 1
    return out


def prose(path: Path) -> str:
    """The text without its fenced blocks (each replaced by a blank line)."""
    out, inside = [], False
    for line in path.read_text().splitlines():
        if FENCE.match(line) or (inside and line.strip() == "```"):
            inside = not inside
            out.append("")
        elif not inside:
            out.append(line)
    return "\n".join(out)


def inline_code(path: Path) -> list[str]:
    """The text of every `inline code` span (a span may wrap a line, not a paragraph)."""
    return [s for s in re.findall(r"`([^`]+)`", prose(path)) if "\n\n" not in s]


def paragraphs(path: Path) -> list[str]:
    """Prose paragraphs, and each line of every fenced block."""
    return ([p for p in re.split(r"\n\s*\n", prose(path)) if p.strip()]
            + [l for b in blocks(path) for l in b.code.splitlines() if l.strip()])


def sentences(path: Path) -> list[str]:
    return [s for p in paragraphs(path) for s in re.split(r"(?<=[.;!?])\s+(?=[A-Z`*])", p)]


def cells(line: str) -> list[str]:
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def tables(path: Path) -> list[tuple[list[str], list[list[str]], str]]:
    """(header, rows, the prose just above) of every markdown table outside fenced blocks."""
    lines, out, i = prose(path).splitlines(), [], 0
    while i < len(lines):
        if lines[i].lstrip().startswith("|") and i + 1 < len(lines) and \
                re.match(r"^\s*\|[\s|:-]+\|\s*$", lines[i + 1]):
            j = i + 2
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            out.append((cells(lines[i]), [cells(l) for l in lines[i + 2:j]],
                        "\n".join(lines[max(0, i - 4):i])))
            i = j
        else:
            i += 1
    return out


def table_with(path: Path, *header: str) -> list[list[str]]:
    found = [rows for head, rows, _ in tables(path) if all(h in head for h in header)]
    assert len(found) == 1, f"{rel(path)}: expected one table with columns {header}"
    return found[0]


# ---------------------------------------------------------------------------------------------
# Facts: the audit table, schema versions, the NaN headline
# ---------------------------------------------------------------------------------------------
def test_the_audit_tables_column_count_is_the_one_the_package_writes(tmp_path):
    from fa_nb_utils.paper.audit import AuditTable, save_audit_table

    table = AuditTable(audits=[], summaries=[], profile=None, dataset="synthetic", stamp=None)
    with open(save_audit_table(table, tmp_path)["csv"], newline="") as f:
        written = len(next(csv.reader(f)))
    said = [(rel(p), int(n)) for p in DOCS for para in paragraphs(p) if "audit table" in para
            for n in re.findall(r"(\d+) columns|\((\d+) in all\)", para) for n in n if n]
    assert said, "no doc states the audit table's column count any more: update this test"
    assert all(n == written for _, n in said), (said, written)


def test_the_report_schema_versions_are_the_codes():
    text = prose(ROOT / "docs" / "protocol.md")
    current = re.findall(r"`schema_version`\s+\(currently\s+(\d+)\)", text)
    assert current and {int(v) for v in current} == {SCHEMA_VERSION}, current
    readable = re.findall(r"reads\s+schema\s+versions\s+([\d, and]+?)\s+and\s+refuses", text)
    assert readable, "protocol.md no longer says which schema versions a report reads"
    assert {int(v) for v in re.findall(r"\d+", readable[0])} == set(READABLE_SCHEMAS)
    older = {int(v) for p in DOCS for v in re.findall(r"older\s+fa-eval\s+\(schema\s+(\d+)\)",
                                                      prose(p))}
    assert older and older <= set(READABLE_SCHEMAS) - {SCHEMA_VERSION}, older


# ---------------------------------------------------------------------------------------------
# Facts: the rules' options, the diagnostics' thresholds
# ---------------------------------------------------------------------------------------------
def _same(text: str, value) -> bool:
    """A value as the docs write it ("none", "256", "1", "1e-7") against the code's."""
    text = text.strip().strip("`").strip('"')
    if isinstance(value, str):
        return text == value
    return math.isclose(float(text), float(value), rel_tol=1e-12)


def _options(rule: str) -> dict:
    return {f.name: f.default for f in dataclasses.fields(RULES[rule].Options)}


def test_readme_rules_table_lists_every_rule_with_its_options_and_defaults():
    """`name=a|b`: its values, the default first; `name` (v): its default v; —: no options."""
    rows = table_with(ROOT / "README.md", "rule", "options")
    names = [re.fullmatch(r"`(\w+)`", r[0]).group(1) for r in rows]
    builtin = {n for n, cls in RULES.items() if cls.__module__.startswith("fa_nb_utils.")}
    assert set(names) == builtin, (names, sorted(builtin))
    for name, row in zip(names, rows):
        options, cell = _options(name), row[-1]
        if cell == "—":
            assert not options, f"{name}: the README says no options, the code has {options}"
            continue
        items = re.findall(r"`([^`]+)`(?:\s*\(([^)]+)\))?", cell)
        said = {}
        for token, default in items:
            key, _, values = token.partition("=")
            assert bool(values) != bool(default), f"{name}: `{token}` needs its default stated"
            said[key] = values.split("|") if values else [default]
        assert set(said) == set(options), f"{name}: README {sorted(said)}, code {sorted(options)}"
        for key, values in said.items():
            assert _same(values[0], options[key]), f"{name}.{key}: README default {values[0]}, " \
                                                   f"code {options[key]!r}"
            for v in values:   # every listed value is one the rule accepts
                RULES[name].parse_options({key: type(options[key])(v)})


def test_rules_md_option_tables_match_the_options_dataclasses():
    option_classes = {cls.Options.__name__: cls for cls in RULES.values()}
    checked = 0
    for head, rows, above in tables(ROOT / "docs" / "rules.md"):
        if head[:3] != ["option", "values", "default"]:
            continue
        (cls_name,) = re.findall(r"`(\w+Options)`", above)[-1:]
        rule = option_classes[cls_name]
        options = {f.name: f.default for f in dataclasses.fields(rule.Options)}
        names = [r[0].strip("`") for r in rows]
        assert set(names) == set(options), (cls_name, names, sorted(options))
        for name, row in zip(names, rows):
            assert _same(row[2], options[name]), (cls_name, name, row[2], options[name])
            for v in re.findall(r'"([^"]+)"', row[1]):
                rule.parse_options({name: v})
        checked += 1
    assert checked >= 2, "rules.md's option tables (DFAOptions, FAOptions) were not found"


FIRES = re.compile(r"(?P<op>[<>])\s*(?P<value>\d[\d.e+-]*)")


def _check_fires(key: str, text: str) -> None:
    diag, m = DIAGNOSTICS[key], FIRES.search(text)
    assert m, f"({key}): no '> x' or '< x' in {text!r}"
    assert (m["op"] == ">") == (diag.direction == ABOVE), f"({key}) fires {diag.direction}"
    default = getattr(DiagnosticThresholds(), diag.threshold_field)
    assert _same(m["value"], default), f"({key}): the docs say {m['value']}, the default is " \
                                       f"{diag.threshold_field}={default}"


def test_readme_diagnostics_table_has_the_thresholds_defaults():
    rows = table_with(ROOT / "README.md", "statistic", "fires when")
    keys = [re.match(r"\((\w)\)", r[0]).group(1) for r in rows]
    assert keys == list(BUILTIN_KEYS)
    for key, row in zip(keys, rows):
        _check_fires(key, row[-1])


def test_protocol_md_at_a_glance_has_the_threshold_fields_and_defaults():
    rows = table_with(ROOT / "docs" / "protocol.md", "default", "fires when")
    assert [r[0] for r in rows] == [f"({k})" for k in BUILTIN_KEYS]
    for row in rows:
        key, field, default, fires = row[0][1], row[2].strip("`"), row[3], row[4]
        assert field == DIAGNOSTICS[key].threshold_field, (key, field)
        assert _same(default, getattr(DiagnosticThresholds(), field)), (key, default)
        _check_fires(key, fires)


def test_thresholds_in_prose_are_the_defaults():
    """"(a) ..., fires above 50" and "`g_norm_floor` (default 1e-7)" wherever the docs say so."""
    fields = {d.threshold_field: k for k, d in DIAGNOSTICS.items() if k in BUILTIN_KEYS}
    found = 0
    for path in DOCS:
        text = prose(path)
        for m in re.finditer(r"\(([a-e])\)[^.;()]{0,80}?fires\s+(above|below)\s+(\d[\d.e-]*\d)",
                             text):
            found += 1
            _check_fires(m[1], f"{'>' if m[2] == 'above' else '<'} {m[3]}")
        for m in re.finditer(rf"\b({'|'.join(fields)})`?[^.;]{{0,20}}?\(default\s+(\d[\d.e-]*\d)",
                             text):
            found += 1
            assert _same(m[2], getattr(DiagnosticThresholds(), m[1])), (rel(path), m[0])
    assert found >= 8


# ---------------------------------------------------------------------------------------------
# Facts: every command line the docs write
# ---------------------------------------------------------------------------------------------
# Flags of other programs the docs mention on purpose.
OTHER_TOOLS = {"--nthreads": "dask worker", "-o": "mount", "--allow-root": "jupyter lab"}
FLAG = re.compile(r"(?<![\w./-])(--?[A-Za-z][\w-]*)")


def _help(main) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["--help"])
    return out.getvalue()


def _benchmark_help(script: Path) -> str:
    """A benchmark's flags (and choices) as its --help would list them, read from its
    `add_argument` calls: importing a benchmark may patch the package (embed_growth_probe.py
    does), so none is imported here. A script that parses with `_common.parse_common` has its
    shared flags too."""
    parts, text = ["-h", "--help"], script.read_text()
    if "parse_common(" in text:
        text += "\n" + (script.parent / "_common.py").read_text()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            flags = [a.value for a in node.args if isinstance(a, ast.Constant)]
            choices = [k.value for k in node.keywords if k.arg == "choices"]
            if choices and isinstance(choices[0], (ast.Tuple, ast.List)):
                flags = [f"{f} {{{','.join(str(c.value) for c in choices[0].elts)}}}"
                         for f in flags]
            parts += flags
    return "\n".join(parts)


def _commands() -> list[tuple[str, str, str]]:
    """(doc, command, its arguments) for every `python -m fa_nb_utils.X`, `fa-X`, and
    `python benchmarks/X.py` in inline code or a fenced block (continued lines joined)."""
    out = []
    for path in DOCS:
        texts = inline_code(path)
        for b in blocks(path):
            texts += b.code.replace("\\\n", " ").splitlines()
        for text in texts:
            text = text.split("#", 1)[0].replace("\n", " ")
            for m in re.finditer(r"python -m fa_nb_utils\.(\w+)|\bfa-(train|diagnose|reproduce)"
                                 r"\b|python benchmarks/(\w+)\.py", text):
                rest = re.split(r"python |\bfa-|\bmake ", text[m.end():])[0]
                name = (f"benchmarks/{m[3]}.py" if m[3] else f"fa_nb_utils.{m[1] or m[2]}")
                out.append((rel(path), name, rest))
    return out


@pytest.fixture(scope="module")
def command_help() -> dict[str, str]:
    mains = {"fa_nb_utils.train": cli.train_main, "fa_nb_utils.diagnose": cli.diagnose_main,
             "fa_nb_utils.reproduce": cli.reproduce_main}
    out = {name: _help(main) for name, main in mains.items()}
    out["fa_nb_utils.lab"] = None   # its arguments are JupyterLab's own (it adds --allow-root)
    for script in sorted((ROOT / "benchmarks").glob("[!_]*.py")):
        out[f"benchmarks/{script.name}"] = _benchmark_help(script)
    return out


def _choices(help_text: str) -> dict[str, set[str]]:
    return {flag: set(choices.split(",")) for flag, choices
            in re.findall(r"(--[\w-]+) \{([^}]+)\}", help_text)}


def test_every_flag_the_docs_write_is_a_flag_of_its_command(command_help):
    from fa_nb_utils.paper.profiles import PROFILES

    commands = _commands()
    assert len(commands) > 10
    all_flags = set()
    for name, text in command_help.items():
        all_flags |= set(FLAG.findall(text or ""))
    values = {"--rule": set(RULES), "--profile": set(PROFILES)}
    for doc, name, args in commands:
        assert name in command_help, f"{doc}: `{name}` is not a command of this project"
        if command_help[name] is None:
            continue
        flags, choices = set(FLAG.findall(command_help[name])), _choices(command_help[name])
        words = args.split()
        for i, word in enumerate(words):
            word = word.strip("[]")
            if not FLAG.fullmatch(word):
                continue
            assert word in flags, f"{doc}: `{name}` has no flag {word}"
            allowed = choices.get(word) or (values.get(word) if name.startswith("fa_nb_utils")
                                            else None)
            value = words[i + 1].strip("[]") if i + 1 < len(words) else ""
            if allowed and value and not FLAG.fullmatch(value) and "<" not in value:
                for v in value.split("|"):
                    assert v in allowed, f"{doc}: `{name} {word} {v}`: not one of {allowed}"
    for path in DOCS:   # a flag on its own in inline code: a flag of one of the commands
        for span in inline_code(path):
            m = re.fullmatch(r"(--?[A-Za-z][\w-]*)(?:[ =].*)?", span.strip())
            if m and m[1] not in OTHER_TOOLS:
                assert m[1] in all_flags, f"{rel(path)}: `{span}` is not a flag of any command"


def test_every_make_command_the_docs_write_exists():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    found = 0
    for path in DOCS:
        texts = inline_code(path) + [l for b in blocks(path) for l in b.code.splitlines()]
        for text in texts:
            for m in re.finditer(r"\bmake ([a-z][\w-]*)((?: [A-Z_]+=\S+)*)", text.split("#")[0]):
                found += 1
                assert m[1] in targets, f"{rel(path)}: no make target {m[1]!r}"
                for var in re.findall(r"([A-Z_]+)=", m[2]):
                    assert f"$({var})" in makefile, f"{rel(path)}: make ignores {var}"
    assert found > 5


# ---------------------------------------------------------------------------------------------
# Facts: names, paths, the layout, the notebooks' files, the tiny profile's time
# ---------------------------------------------------------------------------------------------
def _words(*globs: str) -> set[str]:
    return {w for g in globs for p in ROOT.glob(g)
            for w in re.findall(r"[A-Za-z_]\w*", p.read_text())}


# Names in the docs' examples that stand for the reader's own (a file, a helper of theirs).
READERS_OWN = {"healthy_reports", "failing_reports", "make_bridge", "dask_jobqueue",
               "train_test_split", "test_size", "random_state"}


def test_every_backticked_name_exists_in_the_code():
    """A snake_case name in `inline code` (an attribute, a function, a field, a JSON key) must
    occur in the package, the benchmarks, the notebooks or the tests: a renamed method leaves
    the docs naming one that is gone."""
    known = _words("fa_nb_utils/**/*.py", "benchmarks/*.py", "notebooks/*.ipynb", "tests/*.py")
    missing = []
    for path in DOCS:
        for span in inline_code(path):
            for name in re.findall(r"(?<![\w/:-])([a-z][a-z0-9]*(?:_[a-z0-9]+)+)"
                                   r"(?!\w|\.(?:py|md|ipynb)\b)", span):
                if name not in known and name not in READERS_OWN:
                    missing.append(f"{rel(path)}: `{name}` (in `{span}`)")
    assert not missing, "\n".join(missing)


def _package_callables() -> dict:
    """Every public function and class defined in a module of fa_nb_utils, by name (a name two
    modules define is left out: a call to it cannot be resolved from the docs' text)."""
    import importlib
    import inspect
    import pkgutil

    found: dict[str, list] = {}
    for info in pkgutil.walk_packages(fa_nb_utils.__path__, "fa_nb_utils."):
        if info.name in ("fa_nb_utils.train", "fa_nb_utils.diagnose", "fa_nb_utils.reproduce"):
            continue   # the `python -m` shims refuse to be imported
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and not name.startswith("_") \
                    and obj.__module__ == module.__name__:
                found.setdefault(name, []).append(obj)
    return {name: objs[0] for name, objs in found.items() if len(objs) == 1}


def test_every_keyword_the_docs_pass_is_a_parameter():
    """In inline code and python blocks that parse as Python, a call to a function or class of
    the package passes only keywords it takes (a renamed parameter leaves the docs calling with
    one that is gone)."""
    import inspect

    callables, checked, wrong = _package_callables(), 0, []
    for path in DOCS:
        spans = [s.replace("\n", " ") for s in inline_code(path)]   # prose wraps them
        for text in spans + [b.code for b in python_blocks(path)]:
            try:
                tree = ast.parse(text)
            except SyntaxError:
                continue
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                target = callables.get(name)
                if target is None:
                    continue
                params = inspect.signature(target).parameters
                if any(p.kind is p.VAR_KEYWORD for p in params.values()):
                    continue
                for kw in node.keywords:
                    checked += 1
                    if kw.arg is not None and kw.arg not in params:
                        wrong.append(f"{rel(path)}: {name}(... {kw.arg}=...): takes "
                                     f"{', '.join(params)}")
    assert checked > 30
    assert not wrong, "\n".join(wrong)


def test_every_cited_file_and_test_exists():
    cited = 0
    for path in DOCS:
        for span in inline_code(path):
            for file, test in re.findall(r"((?:fa_nb_utils|tests|benchmarks|docs|notebooks)/"
                                         r"[\w./-]*\w)(?:::(\w+))?", span):
                cited += 1
                assert (ROOT / file).exists(), f"{rel(path)}: `{file}` does not exist"
                if test:
                    assert re.search(rf"^def {test}\(", (ROOT / file).read_text(), re.M), \
                        f"{rel(path)}: `{file}` has no test {test}"
    assert cited > 20


def test_readme_layout_lists_every_module_and_nothing_else():
    rows = {r[0].strip("`"): r[1] for r in table_with(ROOT / "README.md", "path", "what")}

    def listed(cell, ext):
        return {t[:-len(ext)] if t.endswith(ext) else t for t in re.findall(r"`([\w.]+)`", cell)}

    for folder in ("fa_nb_utils/", "fa_nb_utils/data/", "fa_nb_utils/paper/"):
        modules = {p.stem for p in (ROOT / folder).glob("*.py") if p.stem != "__init__"}
        assert listed(rows[folder], ".py") == modules, folder
    benchmarks = {p.name for p in (ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_")}
    assert {t for t in re.findall(r"`([\w.]+\.py)`", rows["benchmarks/"])} == benchmarks
    docs = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert {t for t in re.findall(r"`([\w.]+\.md)`", rows["docs/"])} == docs


def _output_names() -> set[str]:
    """The tables, figures and reports the notebooks write: the names the paper modules save
    under (`*_NAME` constants, literal names given to save_*) and those the notebooks give."""
    names = set()
    for p in (ROOT / "fa_nb_utils" / "paper").glob("*.py"):
        text = p.read_text()
        names |= set(re.findall(r'^\w+_NAME = "(0\d_\w+)"', text, re.M))
        names |= set(re.findall(r'save_\w+\([^,]+,\s*"(0\d_\w+)"', text))
    for p in (ROOT / "notebooks").glob("*.ipynb"):
        source = "".join("".join(c["source"]) for c in json.loads(p.read_text())["cells"]
                         if c["cell_type"] == "code")
        names |= set(re.findall(r'save_\w+\([^,]+,\s*"(0\d_\w+)"', source))
    return names


@pytest.mark.parametrize("doc,header", [("docs/reporting.md", ("notebook", "tables", "figures")),
                                        ("README.md", ("notebook", "makes"))])
def test_the_notebooks_files_are_listed_for_every_notebook(doc, header):
    names, notebooks = _output_names(), {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert len(names) > 10
    rows = table_with(ROOT / doc, *header)
    listed = {r[0].strip("`"): r for r in rows}
    assert set(listed) == notebooks, f"{doc}: rows {sorted(listed)}, notebooks {sorted(notebooks)}"
    for nb, row in listed.items():
        said = {n for cell in row[1:] for n in re.findall(r"\b(0\d_[a-z0-9_]+)", cell)}
        assert said == {n for n in names if n[:2] == nb[:2]}, f"{doc}, {nb}: lists {said}"


def test_the_tiny_profiles_time_is_stated_once():
    tiny = re.compile(r"`tiny`|--profile tiny|\"tiny\"|PROFILE=tiny|tiny profile")
    duration = re.compile(r"\b\d+(?:\.\d+)?(?:\s*[–-]\s*\d+)?\s*(?:s|min|minutes?|h|hours?)\b"
                          r"|\b(?:a|one|two|three) minutes?\b|\ba minute\b")
    stated = [(rel(p), d) for p in DOCS for sentence in sentences(p) if tiny.search(sentence)
              for d in duration.findall(sentence)]
    assert len(stated) == 1, f"the tiny profile's time must be stated once: {stated}"


# ---------------------------------------------------------------------------------------------
# Blocks: every ```python block runs
# ---------------------------------------------------------------------------------------------
def python_blocks(path: Path) -> list[Block]:
    return [b for b in blocks(path) if b.lang == "python"]


def test_every_not_run_mark_sits_on_a_python_block_and_gives_a_reason():
    marked = 0
    for path in DOCS:
        lines = path.read_text().splitlines()
        fences = {b.line - 1 for b in python_blocks(path)}   # 0-based fence lines
        for i, line in enumerate(lines):
            m = NOT_RUN.match(line.strip())
            if m or "not run by tests/test_docs.py" in line:
                marked += 1
                assert m and len(m["reason"].strip()) >= 10, f"{rel(path)}:{i + 1}: give a reason"
                assert i + 1 in fences, f"{rel(path)}:{i + 1}: the mark is not above a python block"
    assert marked >= 1


TINY = {"d_hidden": 16, "num_blocks": 2, "synthetic_n_train": 2000, "synthetic_n_test": 1280,
        "limit_train": 128, "eval_batches": 2, "eval_batch_size": 64, "progress": False}


def tiny_config(config, data_root):
    sizes = dict(TINY) if config.architecture == "resmlp" else {
        k: v for k, v in TINY.items() if k not in ("d_hidden", "num_blocks")}
    return dataclasses.replace(config, data="synthetic", data_root=str(data_root),
                               synthetic_preset="standard", epochs=min(config.epochs, 2), **sizes)


def _token_batches(ns):
    g = torch.Generator().manual_seed(0)   # the (N, T, 16) inputs the block's model reads
    ns["eval_batches"] = [(torch.randn(16, 8, 16, generator=g),
                           torch.randint(0, 10, (16,), generator=g)) for _ in range(2)]


def _partial_rows(ns):
    ns["rows"] = [{"seed": s, "acc": a, "h_L": h, "g_k": 5e-10, "h_0": 9.0}
                  for s, a, h in ((42, 0.30, 4e8), (123, 0.31, 2e8), (456, 0.31, 6e8))]


def _audit_table(ns):
    from fa_nb_utils.paper.audit import audit_runs
    from fa_nb_utils.paper.experiments import RunRecord

    result = ns["result"]
    frozen = fa_nb_utils.train(dataclasses.replace(result.config, freeze_blocks=True))
    records = [RunRecord("dfa", result.config.seed, False, result.config, result),
               RunRecord("dfa", result.config.seed, True, frozen.config, frozen)]
    ns["table"] = audit_runs(records, result.data, profile="tiny")


def _narrow_columns_exist(ns):
    sidecar = json.loads(Path("results/tables/02_audit_table_narrow.json").read_text())
    unknown = set(sidecar["columns"]) - set(ns["table"].columns)
    assert not unknown, f"columns the audit table does not have: {unknown}"


SETUP = {
    ("README.md", "class Classifier(nn.Module):"): _token_batches,
    ("docs/protocol.md", "logits, hiddens = model(x, return_hidden=True)"):
        lambda ns: ns.update(x=ns["x_test"][:8]),
    ("docs/protocol.md", "standard_verdict(accuracy, res"):
        lambda ns: ns.update(accuracy=ns["result"].trace[-1]["acc_eval"]),
    ("docs/protocol.md", "res = partial_audit(rows"): _partial_rows,
    ("docs/reporting.md", "for r, ctx in results"):
        lambda ns: ns.update(results=[(ns["report"], ns["context"])]),
    ("docs/reporting.md", '"02_audit_table_narrow"'): _audit_table,
}
AFTER = {("docs/reporting.md", '"02_audit_table_narrow"'): _narrow_columns_exist}


def _keyed(table: dict, block: Block):
    return [f for (doc, key), f in table.items() if doc == rel(block.path) and key in block.code]


def test_every_setup_key_matches_exactly_one_block():
    for doc, key in [*SETUP, *AFTER]:
        hits = [b for b in python_blocks(ROOT / doc) if key in b.code]
        assert len(hits) == 1, f"{doc}: {key!r} matches {len(hits)} blocks"


@pytest.fixture(scope="module")
def reader(tmp_path_factory, data_root, synthetic_folder):
    """The reader's own run, model and data, in a folder the blocks run in."""
    home = tmp_path_factory.mktemp("reader")
    config = tiny_config(fa_nb_utils.TrainConfig(rule="dfa", seed=42), data_root)
    result = trainer.train(config, runs_root=home / "results" / "runs")
    return home, result


def _run_block(block: Block, ns: dict) -> None:
    code = block.code.replace("<run>", ns["__run__"])
    if re.search(r"^>>> ", code, re.M):
        test = doctest.DocTestParser().get_doctest(code, ns, block.where, block.where, block.line)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        out = io.StringIO()
        runner.run(test, out=out.write, clear_globs=False)
        assert not runner.failures, f"{block.where}: the doctest's output differs\n{out.getvalue()}"
        ns.update(test.globs)
        return
    try:
        exec(compile(code, block.where, "exec"), ns)
    except Exception as exc:
        raise AssertionError(f"{block.where}: the block fails: {exc!r}") from exc


@pytest.mark.parametrize("doc", [rel(p) for p in RUNNABLE_DOCS])
def test_python_blocks_run(doc, reader, data_root, monkeypatch):
    home, result = reader
    real_train = trainer.train

    def tiny_train(config, *args, **kwargs):
        return real_train(tiny_config(config, data_root), *args, **kwargs)

    monkeypatch.setattr(fa_nb_utils, "train", tiny_train)
    monkeypatch.setattr(trainer, "train", tiny_train)
    monkeypatch.setenv("FA_EVAL_DATA", str(data_root))
    monkeypatch.chdir(home)
    rules_before = dict(RULES)   # restored below: a block may register a rule
    x_test, y_test = result.data.test_x, result.data.test_y
    module = types.ModuleType(f"docs_{Path(doc).stem}")   # a module: dataclasses look it up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    ns = module.__dict__
    ns.update(__run__=result.run_dir.name, result=result, model=result.model, x_test=x_test,
              y_test=y_test, my_credits=lambda x, y: result.rule.credits(result.model, x, y))
    ran = 0
    try:
        for block in python_blocks(ROOT / doc):
            if NOT_RUN.match(block.above):
                continue
            for setup in _keyed(SETUP, block):
                setup(ns)
            _run_block(block, ns)
            for check in _keyed(AFTER, block):
                check(ns)
            ran += 1
    finally:
        RULES.clear()
        RULES.update(rules_before)
    assert ran or not python_blocks(ROOT / doc)
