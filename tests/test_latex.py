"""The paper's LaTeX (paper/latex.py): every table and macro compiles with a real pdflatex.

A tiny grid (BP and DFA) is trained once; its runs, audit, separation and early-stop tables are
saved by the notebooks' own functions, and one more table holds every symbol the notebooks
write (≈, ⇒, ‖, Γ, λ, ±, ...); the slow test does the same on the smoke reproduction. One
document inputs every table, uses every macro and includes every figure; it must compile, and
no paper-form table may be wider than the NeurIPS text (5.5 in). Without pdflatex the compiling tests skip and print the install command.
"""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fa_nb_utils.paper import audit, early_stop, findings, gain, latex
from fa_nb_utils.paper.figures import run_metadata, save_table
from fa_nb_utils.text import latex_escape

INSTALL = "apt-get install texlive-latex-base texlive-latex-recommended"
SYMBOLS = "‖h_L‖ ≈ 4e8 ⇒ walked back; Γ_0 = 0.42, λ = 1e-2, 0.306 ± 0.008, 237× — 2–3 … ≥ ≤ →"


def need_pdflatex():
    if shutil.which("pdflatex") is None:
        print(f"pdflatex is missing; install it with: {INSTALL}")
        pytest.skip(f"pdflatex is missing ({INSTALL})")


@pytest.fixture(scope="module")
def results(tiny_grid, tmp_path_factory):
    """A results folder from the tiny grid (conftest), through the notebooks' save functions."""
    results = tmp_path_factory.mktemp("results")
    profile, data = tiny_grid["profile"], tiny_grid["data"]
    records, table = tiny_grid["records"], tiny_grid["table"]
    tables = results / "tables"
    audit.save_runs_table(records, profile=profile, data=data, outdir=tables)
    audit.save_audit_table(table, outdir=tables)
    audit.save_hero_figure(table, outdir=results / "figures")
    sep, labels = gain.separation_of(table)
    gain.save_separation(sep, labels, profile, results)
    early_stop.save_early_stop_table(early_stop.early_stop_table(records), profile, results)
    meta = run_metadata(profile="tiny")
    save_table([{"claim": SYMBOLS, "value": SYMBOLS}], "99_symbols", columns=["claim", "value"],
               metadata=meta, caption=SYMBOLS, outdir=tables)  # a table latex.py has no form for
    latex.write_paper(results)
    return {"results": results, "table": table}


def compile_all(results: Path, workdir: Path) -> dict:
    """Compile one document with every table (paper forms and tables/), every macro and every
    figure; returns the log, the macro names and, per paper-form table, its overfull boxes (pt)."""
    paper = results / "paper"
    names = re.findall(r"\\newcommand\{\\([^}]*)\}", (paper / "numbers.tex").read_text())
    body = [r"\documentclass{article}", r"\usepackage[textwidth=5.5in]{geometry}",
            rf"\input{{{paper / 'preamble'}}}", rf"\input{{{paper / 'numbers'}}}",
            r"\begin{document}"]
    tables = [p for p in sorted(paper.glob("*.tex")) if p.stem not in ("preamble", "numbers")]
    tables += sorted((results / "tables").glob("*.tex"))
    for path in tables:
        body += [rf"\typeout{{FATABLE {path.parent.name}/{path.stem}}}",
                 rf"\input{{{path.with_suffix('')}}}", r"\clearpage"]
    body.append(r"\typeout{FATABLE end}")
    body += [rf"\noindent {n}: \{n}.\par" for n in names]
    body += [rf"\noindent\includegraphics[width=\linewidth]{{{f.with_suffix('')}}}\par"
             for f in sorted((results / "figures").glob("*.pdf"))]
    body.append(r"\end{document}")
    (workdir / "doc.tex").write_text("\n".join(body) + "\n")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
                          cwd=workdir, capture_output=True, text=True, timeout=300)
    log = (workdir / "doc.log").read_text(errors="replace")
    assert proc.returncode == 0 and (workdir / "doc.pdf").exists(), \
        "pdflatex failed:\n" + "\n".join(l for l in log.splitlines() if l.startswith("!"))[:3000]
    overfull, current = {}, None
    for line in log.splitlines():
        if line.startswith("FATABLE "):
            current = line.split()[1]
        m = re.match(r"Overfull \\hbox \(([\d.]+)pt too wide\)", line)
        if m and current and current.startswith("paper/"):
            overfull.setdefault(current, []).append(float(m.group(1)))
    return {"log": log, "names": names, "tables": tables, "overfull": overfull}


def check_paper(results: Path, workdir: Path) -> None:
    paper = results / "paper"
    for path in [*paper.glob("*.tex"), *(results / "tables").glob("*.tex")]:
        text = path.read_text()
        assert text.isascii(), (path.name, sorted({c for c in text if not c.isascii()}))
    out = compile_all(results, workdir)
    assert out["names"] and all(re.fullmatch(r"[A-Za-z]+", n) for n in out["names"]), \
        [n for n in out["names"] if not re.fullmatch(r"[A-Za-z]+", n)]
    assert len(set(out["names"])) == len(out["names"])
    wide = {t: [w for w in ws if w > 1.0] for t, ws in out["overfull"].items()}
    assert not any(wide.values()), f"paper-form tables wider than 5.5 in: {wide}"
    assert "Undefined control sequence" not in out["log"]
    assert {"paper/table1", "paper/01_runs", "paper/02_audit_table"} <= {
        f"{p.parent.name}/{p.stem}" for p in out["tables"]}
    for name, sidecar in latex.load_sidecars(results).items():  # no paper column goes missing
        numbers = sidecar.get("numbers")
        summary = numbers.get("summary") if isinstance(numbers, dict) else None
        keys = set(sidecar["columns"]) | {k for r in summary or [] if isinstance(r, dict)
                                          for k in r}
        missing = [k for k, _ in latex.PAPER_COLUMNS.get(name, ()) if k not in keys]
        assert not missing, f"{name}: latex.PAPER_COLUMNS names no column {missing}"


def test_every_table_macro_and_figure_compiles_and_fits_the_text(results, tmp_path):
    need_pdflatex()
    check_paper(results["results"], tmp_path)


def test_table1_has_the_papers_six_columns_one_row_per_rule(results):
    tex = (results["results"] / "paper" / "table1.tex").read_text()
    head = tex.split(r"\midrule")[0].splitlines()[-1]
    assert head.count("&") == 5 and "Method" in head and r"$\Gamma$" in head
    rows = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    assert [r.split(" & ")[0] for r in rows] == ["BP", "DFA"]
    assert "paper mode with (d) matched per rule" in tex


def test_macros_state_the_numbers_the_notebooks_sentences_state(results):
    """\\faAccDFA and notebook 02's sentence about DFA print the same mean ± std."""
    numbers = (results["results"] / "paper" / "numbers.tex").read_text()
    said = "\n".join(findings.audit_table(results["table"]))
    for rule, label in (("bp", "BP"), ("dfa", "DFA")):
        m = re.search(rf"\\newcommand{{\\faAcc{label}}}{{\\ensuremath{{([\d.]+) \\pm ([\d.]+)}}}}",
                      numbers)
        assert m, f"no \\faAcc{label}"
        assert f"{label}: accuracy {m.group(1)} ± {m.group(2)}" in said
    header = numbers.splitlines()[:3]
    sidecar = json.loads((results["results"] / "tables" / "02_audit_table.json").read_text())
    assert sidecar["metadata"]["data_fingerprint"] in header[1]
    assert "profile tiny" in header[1] and sidecar["metadata"]["git_commit"] in header[1]
    assert r"\newcommand{\faPaperAccDFA}{\ensuremath{0.306 \pm 0.008}}" in numbers
    assert all(" % " in line for line in numbers.splitlines() if line.startswith(r"\newcommand"))


def test_macro_names_spell_digits_and_a_collision_is_refused():
    assert latex.macro_name("DepthAcc", "fa", "L", 4) == "faDepthAccFALFour"
    assert latex.macro_name("Acc", "state_bridge") == "faAccStateBridge"
    macros = latex.Macros()
    macros.add(("Acc", "dfa"), "0.3", "one table")
    with pytest.raises(ValueError, match="faAccDFA.*twice"):
        macros.add(("Acc", "dfa"), "0.4", "another table")


def test_escape_writes_ascii_latex_for_the_symbols_the_tables_use():
    out = latex_escape(SYMBOLS + " α é h₀")
    assert out.isascii()
    for tex in (r"$\approx$", r"$\Rightarrow$", r"$\|$", r"$\Gamma$", r"$\lambda$", r"$\pm$",
                r"$\alpha$", r"h\_L"):
        assert tex in out


@pytest.mark.slow
def test_the_smoke_reproductions_paper_folder_compiles(smoke_results, tmp_path):
    need_pdflatex()
    assert (smoke_results.results / "paper" / "numbers.tex").exists()
    check_paper(smoke_results.results, tmp_path)


def _notebook(path: Path, body: str) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "paper"\nresults_dir = "results"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, str(path))


def test_an_only_reproduction_rewrites_the_paper_folder_from_every_table(tmp_path):
    from fa_nb_utils.paper import runner as rp

    books = tmp_path / "notebooks"
    books.mkdir()
    _notebook(books / "00_table.ipynb",
              "from pathlib import Path\nfrom fa_nb_utils.paper.figures import save_table\n"
              "save_table([{'a': '≈ 1'}], '00_table', columns=['a'], metadata={}, "
              "outdir=Path(results_dir) / 'tables')")
    results = tmp_path / "r"
    save_table([{"b": "Γ"}], "01_earlier", columns=["b"], metadata={},
               outdir=results / "tables")  # from an earlier full run
    rp.reproduce("tiny", only=["00"], results_dir=results, notebooks_dir=books,
                 log=lambda *a: None)
    paper = results / "paper"
    assert r"$\approx$ 1" in (paper / "00_table.tex").read_text()
    assert r"$\Gamma$" in (paper / "01_earlier.tex").read_text()
    assert r"\newcommand{\faPaperAccDFA}" in (paper / "numbers.tex").read_text()
    assert "booktabs" in (paper / "preamble.tex").read_text()


def test_an_unknown_venue_is_refused_before_anything_runs(tmp_path):
    from fa_nb_utils.paper import runner as rp

    with pytest.raises(rp.ReproductionError, match="unknown venue 'nips'.*neurips"):
        rp.reproduce("tiny", venue="nips", results_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_a_two_column_venue_spans_its_tables_over_both_columns(results):
    latex.write_paper(results["results"], venue="icml")
    try:
        assert r"\begin{table*}" in (results["results"] / "paper" / "table1.tex").read_text()
    finally:
        latex.write_paper(results["results"])


def test_a_sidecar_latex_cannot_read_is_named_with_the_fix(tmp_path):
    from fa_nb_utils.paper import runner as rp

    books = tmp_path / "notebooks"
    books.mkdir()
    _notebook(books / "00_nothing.ipynb", "pass")
    results = tmp_path / "r"
    save_table([{"rule": "dfa"}], "02_audit_table", columns=["rule"], metadata={},
               outdir=results / "tables")  # no per-seed numbers: written by an older version
    with pytest.raises(rp.ReproductionError, match=r"the notebooks ran.*rerun its notebook"):
        rp.reproduce("tiny", only=["00"], results_dir=results, notebooks_dir=books,
                     log=lambda *a: None)
    assert (results / "executed" / "00_nothing.ipynb").exists()
