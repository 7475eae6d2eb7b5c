"""Figures and tables for the paper: one style, stable file names, and a JSON sidecar for each.

`save_figure` writes `<name>.pdf` (byte-stable across reruns), `.png` (300 dpi) and `.json` (the
plotted numbers and the run's metadata, `run_metadata`) under `results/figures/`; `save_table`
writes `.csv`, `.tex` (booktabs) and `.json` under `results/tables/`, every file atomically.
`paper_style()` is the one style of every figure (Okabe-Ito colours; `rule_colour`: a rule keeps
its colour everywhere). The venue (`set_venue("icml")`, or FA_EVAL_VENUE; default NeurIPS) sets
every figure's width and font sizes from tueplots' bundle; `figure_legend` gives a figure its one
legend, below the panels.
Not here: what goes into a table or figure (the notebooks' modules), the numbers themselves.
"""
from __future__ import annotations

import contextlib
import csv
import inspect
import io
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..io import write_bytes_atomic, write_json_atomic
from ..text import fmt, latex_escape  # fmt is also imported from here (notebook 03)
from ..version import __version__

# Paper style: the venue's text sizes, thin lines, no top/right spines, TrueType fonts embedded in the PDF
# (editable text), a colour-blind-safe cycle (Okabe-Ito).
OKABE_ITO = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442",
             "#000000"]
PAPER_RC = {
    "font.family": "DejaVu Sans",  # always installed: the venues' Times needs usetex or the font
    "text.usetex": False,          # notebooks draw without LaTeX
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.2,
    "lines.markersize": 3.5,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.4,
    "legend.frameon": False,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.minor.width": 0.4,
    "ytick.minor.width": 0.4,
    "xtick.major.size": 3.0,
    "ytick.major.size": 3.0,
    "xtick.minor.size": 1.8,
    "ytick.minor.size": 1.8,
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "figure.dpi": 100,
}
SYNTHETIC_STAMP = "synthetic data"  # on every table and figure not made on CIFAR-10 ...
STAMPS = {"synthetic": SYNTHETIC_STAMP, "mnist": "MNIST (5,000 digits)"}  # ... its data's name

# --- The venue: every figure's width and font sizes ------------------------------------------------
VENUE_ENV = "FA_EVAL_VENUE"
VENUES = {"neurips": "neurips2024", "icml": "icml2024", "iclr": "iclr2024",
          "aistats": "aistats2025", "tmlr": "tmlr2023", "jmlr": "jmlr2001"}  # tueplots bundles
TWO_COLUMN = {"icml", "aistats"}  # a table spans both columns there (`table*`)
DEFAULT_VENUE = "neurips"
_FONT_KEYS = ("font.size", "axes.titlesize", "axes.labelsize", "legend.fontsize",
              "xtick.labelsize", "ytick.labelsize")
_venue: Optional[str] = None


def check_venue(name: Any, where: str) -> str:
    key = str(name).strip().lower()
    if key not in VENUES:
        raise ValueError(f"{where}: unknown venue {name!r}; choose one of {', '.join(VENUES)}")
    return key


def set_venue(name: Optional[str]) -> None:
    """Size every figure drawn from now on for venue `name` (None: back to FA_EVAL_VENUE, else
    NeurIPS)."""
    global _venue
    _venue = None if name is None else check_venue(name, "set_venue")


def venue() -> str:
    """The venue figures and results/paper/'s tables are sized for: `set_venue`'s, else
    FA_EVAL_VENUE's, else "neurips"."""
    if _venue is not None:
        return _venue
    return check_venue(os.environ.get(VENUE_ENV) or DEFAULT_VENUE, VENUE_ENV)


def venue_rc(column: str = "full", nrows: int = 1, ncols: int = 1) -> dict:
    """tueplots' rcParams of the venue (usetex off): figure size for `column` ("full": the text
    width; "half": one column of a two-column venue, half the text of a one-column one)."""
    from tueplots import bundles

    if column not in ("full", "half"):
        raise ValueError(f"column must be 'full' or 'half', got {column!r}")
    make = getattr(bundles, VENUES[venue()])
    params = inspect.signature(make).parameters
    kw: dict[str, Any] = {"nrows": nrows, "ncols": ncols}
    if "usetex" in params:
        kw["usetex"] = False
    if "column" in params:
        kw["column"] = column
    elif column == "half":
        kw["rel_width"] = 0.5
    return make(**kw)


def figure_size(aspect: float, column: str = "full") -> tuple[float, float]:
    """(width, height) in inches: the venue's `column` width, `aspect` times as tall."""
    width = venue_rc(column)["figure.figsize"][0]
    return width, width * aspect


def new_figure(nrows: int = 1, ncols: int = 1, *, aspect: float, column: str = "full",
               **kw):
    """`plt.subplots` at the venue's width (`figure_size`), in constrained layout."""
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=figure_size(aspect, column), layout="constrained",
                        **kw)


def figure_legend(fig, ncol: int = 4, handles=None, labels=None):
    """The figure's one legend, under its panels (outside the data): every axes' entries, one per
    label, each axes' own legend removed; at most `ncol` columns, fewer where they would be wider
    than the figure. Needs constrained layout (`new_figure`)."""
    if handles is None:
        entries: dict[str, Any] = {}
        for ax in fig.axes:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                entries.setdefault(label, handle)
        handles, labels = list(entries.values()), list(entries)
    for ax in fig.axes:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    for n in range(max(1, min(len(handles), ncol)), 0, -1):
        legend = fig.legend(handles, labels, loc="outside lower center", ncol=n)
        fig.draw_without_rendering()
        if n == 1 or legend.get_window_extent().width <= fig.bbox.width:
            return legend
        legend.remove()


def paper_rc() -> dict:
    """The rcParams of every paper figure: seaborn's "ticks" style and "paper" context, then
    PAPER_RC, the venue's text and figure sizes (`venue_rc`) and the Okabe-Ito colour cycle,
    which seaborn reads too (`axes.prop_cycle`)."""
    import seaborn as sns
    from cycler import cycler

    rc = venue_rc()
    return {**sns.axes_style("ticks"), **sns.plotting_context("paper"), **PAPER_RC,
            **{k: rc[k] for k in _FONT_KEYS}, "figure.figsize": rc["figure.figsize"],
            "axes.prop_cycle": cycler(color=OKABE_ITO)}


@contextlib.contextmanager
def paper_style():
    """The paper style for matplotlib and seaborn, restored on exit (nothing global changes)."""
    import matplotlib as mpl

    with mpl.rc_context(paper_rc()):
        yield


def rule_colour(rule: str) -> str:
    """A rule's colour in every figure, the rule named by its name or its label: Okabe-Ito by its
    place among the registered rules (BP first, then by name, as the notebooks order them), so
    DFA has one colour everywhere."""
    from ..rules import RULES

    if rule not in RULES:
        rule = next((name for name, cls in RULES.items() if cls.label == rule), rule)
    order = sorted(set(RULES) | {rule}, key=lambda r: (r != "bp", r))
    return OKABE_ITO[order.index(rule) % len(OKABE_ITO)]


def git_commit(root: Path | None = None) -> str:
    """The checkout's commit (with '-dirty' if it has uncommitted changes), else 'unknown'."""
    root = root or Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_metadata(profile: str | None = None, seeds: Sequence[int] | None = None,
                 **extra: Any) -> dict:
    """Versions, git commit, profile, seeds, device and the figures' venue: the context every
    sidecar records."""
    import numpy
    import torch

    from importlib.metadata import PackageNotFoundError, version
    try:
        import matplotlib
        mpl_version = matplotlib.__version__
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        mpl_version = None
    try:  # read from the installed metadata: importing seaborn (and pandas) costs ~0.5 s
        sns_version = version("seaborn")
    except PackageNotFoundError:  # pragma: no cover - seaborn is a dependency
        sns_version = None
    return {
        "fa_eval_version": __version__,
        "git_commit": git_commit(),
        "profile": profile,
        "seeds": list(seeds) if seeds is not None else None,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "numpy": numpy.__version__,
        "matplotlib": mpl_version,
        "seaborn": sns_version,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "platform": platform.platform(),
        "venue": venue(),
        **extra,
    }


def _results_dir(kind: str, outdir: Path | None) -> Path:
    if outdir is not None:
        return Path(outdir)
    return Path(__file__).resolve().parents[2] / "results" / kind


PROVENANCE_KEYS = ("fa_eval_version", "git_commit", "profile", "data", "data_fingerprint", "seeds")


def provenance(name: str, metadata: dict) -> dict[str, str]:
    """The PDF's document info from the sidecar's metadata: Title (the figure), Subject (version,
    commit, profile, data, fingerprint, seeds), Keywords (the whole metadata as JSON)."""
    said = [f"{k}={metadata[k]}" for k in PROVENANCE_KEYS if metadata.get(k) is not None]
    return {"Title": name, "Subject": "fa-eval figure; " + "; ".join(said),
            "Keywords": json.dumps(metadata, sort_keys=True, default=str)}


def save_figure(fig, name: str, *, numbers: Any, metadata: dict,
                outdir: Path | None = None) -> dict[str, Path]:
    """Write `name`.pdf (byte-stable, the sidecar's provenance in its document info), `name`.png
    (300 dpi) and `name`.json (numbers + metadata). The PDF is the figure's size: the venue's."""
    outdir = _results_dir("figures", outdir)
    paths = {}
    info = provenance(name, metadata)
    buf = io.BytesIO()
    # No dates and a fixed producer: the same figure gives the same bytes on every rerun.
    fig.savefig(buf, format="pdf", bbox_inches=None,
                metadata={"CreationDate": None, "ModDate": None, "Producer": "fa-eval",
                          "Creator": "fa-eval", **info})
    paths["pdf"] = write_bytes_atomic(outdir / f"{name}.pdf", buf.getvalue())
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=300, bbox_inches=None,
                metadata={"Software": None, "Title": info["Title"],
                          "Description": info["Subject"]})
    paths["png"] = write_bytes_atomic(outdir / f"{name}.png", buf.getvalue())
    paths["json"] = write_json_atomic(outdir / f"{name}.json",
                                      {"figure": name, "numbers": numbers, "metadata": metadata})
    return paths


def latex_booktabs(rows: Sequence[dict], columns: Sequence[str], caption: str = "",
                   label: str = "") -> str:
    """A booktabs table (\\toprule/\\midrule/\\bottomrule) of `rows` restricted to `columns`."""
    lines = ["\\begin{table}[t]", "\\centering", "\\small"]
    if caption:
        lines.append(f"\\caption{{{latex_escape(caption)}}}")
    if label:
        lines.append(f"\\label{{{label}}}")
    lines += [f"\\begin{{tabular}}{{{'l' * len(columns)}}}", "\\toprule",
              " & ".join(latex_escape(c) for c in columns) + " \\\\", "\\midrule"]
    for row in rows:
        lines.append(" & ".join(latex_escape(fmt(row.get(c))) for c in columns) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def save_table(rows: Sequence[dict], name: str, *, columns: Sequence[str], metadata: dict,
               caption: str = "", outdir: Path | None = None,
               numbers: Any = None) -> dict[str, Path]:
    """Write `name`.csv, `name`.tex (booktabs) and `name`.json (rows, numbers, metadata)."""
    outdir = _results_dir("tables", outdir)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: fmt(row.get(c)) for c in columns})
    paths = {"csv": write_bytes_atomic(outdir / f"{name}.csv", buf.getvalue().encode())}
    tex = latex_booktabs(rows, columns, caption=caption, label=f"tab:{name}")
    paths["tex"] = write_bytes_atomic(outdir / f"{name}.tex", tex.encode())
    paths["json"] = write_json_atomic(outdir / f"{name}.json", {
        "table": name, "caption": caption, "columns": list(columns), "rows": list(rows),
        "numbers": numbers, "metadata": metadata})
    return paths


def save_table_and_figure(rows: Sequence[dict], name: str, columns: Sequence[str],
                          metadata: dict, caption: str, numbers: Any, results_dir: str | Path,
                          make_figure) -> dict[str, dict[str, Path]]:
    """One result as a table under `results_dir`/tables (csv, booktabs tex, JSON) and a figure
    under `results_dir`/figures (PDF, PNG, JSON) with the same numbers and metadata in both
    sidecars. `make_figure()` draws it inside the paper style; it is closed after saving."""
    import matplotlib.pyplot as plt

    table = save_table(rows, name, columns=columns, metadata=metadata, caption=caption,
                       outdir=Path(results_dir) / "tables", numbers=numbers)
    with paper_style():
        fig = make_figure()
        try:
            figure = save_figure(fig, name, numbers=numbers, metadata=metadata,
                                 outdir=Path(results_dir) / "figures")
        finally:
            plt.close(fig)
    return {"table": table, "figure": figure}


# --- Shared by the notebooks: where results go, stamps, plain-text tables -------------------------
def dataset_name(profile_or_data: Any) -> str:
    """"cifar10", "synthetic" or a user's data set name, from a Profile, DeviceData or str."""
    from .profiles import Profile

    if isinstance(profile_or_data, Profile):
        return profile_or_data.data
    return getattr(profile_or_data, "name", profile_or_data)


def data_stamp(profile_or_data: Any) -> Optional[str]:
    """What tables and figures not made on CIFAR-10 say of their data ("synthetic data", "MNIST
    (5,000 digits)"), else None."""
    return STAMPS.get(dataset_name(profile_or_data))


def stamp_caption(caption: str, profile_or_data: Any) -> str:
    stamp = data_stamp(profile_or_data)
    return f"{caption} [{stamp}]" if stamp else caption


def profile_metadata(profile, seeds: Optional[Sequence[int]] = None, **extra: Any) -> dict:
    """`run_metadata` for a profile, with its data source and, not on CIFAR-10, the stamp."""
    meta = run_metadata(profile=profile.name,
                        seeds=list(profile.seeds if seeds is None else seeds),
                        data=profile.data, **extra)
    if data_stamp(profile):
        meta["stamp"] = data_stamp(profile)
    return meta


def figures_dir(results_dir: str | Path) -> Path:
    return Path(results_dir) / "figures"


def tables_dir(results_dir: str | Path) -> Path:
    return Path(results_dir) / "tables"


def markdown_table(rows: Sequence[dict], columns: Optional[Sequence[str]] = None,
                   formats: Optional[dict[str, str]] = None,
                   headers: Optional[dict[str, str]] = None,
                   bold: Optional[Callable[[dict], bool]] = None) -> str:
    """`rows` as a Markdown table: `columns` (default: the first row's keys) in order, numbers
    with `formats` ({column: format spec}, default ".4g"), a column's header renamed by
    `headers`, and the rows for which `bold(row)` is true in bold (e.g. summary rows)."""
    rows = list(rows)
    columns = list(columns if columns is not None else (rows[0] if rows else []))
    formats, headers = formats or {}, headers or {}
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(cell(headers.get(c, c)) for c in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = [cell(fmt(row.get(c), formats.get(c, ".4g"))) for c in columns]
        if bold is not None and bold(row):
            cells = [f"**{c}**" if c else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def show_table(rows: Sequence[dict], columns: Optional[Sequence[str]] = None,
               formats: Optional[dict[str, str]] = None,
               headers: Optional[dict[str, str]] = None,
               bold: Optional[Callable[[dict], bool]] = None) -> None:
    """The one way a notebook shows a table: `markdown_table(...)` rendered in the notebook
    (JupyterLab, and the executed notebooks papermill writes); printed as Markdown text
    outside IPython."""
    text = markdown_table(rows, columns, formats=formats, headers=headers, bold=bold)
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:  # pragma: no cover - IPython comes with ipykernel, a dependency
        get_ipython = lambda: None
    if get_ipython() is None:
        print(text)
    else:
        display(Markdown(text))


def show_figure(paths: dict, fig=None, width: int = 720) -> None:
    """Show a saved figure in the notebook: the 300-dpi PNG that `save_figure` wrote (what goes
    into the paper), `width` pixels wide. `fig` is closed, so that the inline backend does not
    draw it a second time. Outside IPython the path is printed."""
    if fig is not None:
        import matplotlib.pyplot as plt
        plt.close(fig)
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:  # pragma: no cover - IPython comes with ipykernel, a dependency
        get_ipython = lambda: None
    print("saved " + ", ".join(str(p) for p in paths.values()))
    if get_ipython() is not None:
        display(Image(filename=str(paths["png"]), width=width))
