"""The backward gain in the audit notebook: why (b) fired, and how far apart healthy and failing
runs' statistics sit (threshold separation), beside the paper's own intervals.

    result = run_fit(profile, results_dir)            # BP trained until it fits the easy data
    fig, paths = save_gain_curve(result, profile, results_dir)
    sep, labels = separation_of(table, fit_report)    # BP (+ the fit) healthy, DFA failing
    paths = save_separation(sep, labels, profile, results_dir)

The fit run (`fit_config`): BP trained until it fits, so that ||g_L|| falls under (b)'s floor
for want of error while its backward gain stays healthy (docs/protocol.md, "(e) the backward gain").
Not here: the gain itself (measures.py), the separation (separation.py).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

from ..diagnostics import DIAGNOSTICS
from ..protocol import diagnose
from ..separation import Separation, threshold_separation
from ..report import DiagnosticThresholds
from ..trace import entry_reports
from ..validation import nan_if_none
from ..config import TrainConfig
from ..runs import TrainResult
from ..trainer import train
from . import published
from .experiments import runs_root
from .figures import (data_stamp, figure_legend, new_figure, paper_style, profile_metadata,
                      save_figure, save_table_and_figure)
from .profiles import Profile

GAIN_CURVE_NAME = "02_gain_curve"
SEPARATION_NAME = "02_threshold_separation"


def fit_stamp(config: TrainConfig) -> str:
    """The fit run's data, as its figure and report say it (a profile may fit on its own data)."""
    if config.data == "synthetic":
        return f"synthetic data, {config.synthetic_preset} preset"
    return data_stamp(config.data) or config.data


def fit_config(profile: Profile) -> TrainConfig:
    """The fit run's config (see the module docstring): `profile.gain_fit` over the defaults."""
    base = dict(rule="bp", seed=profile.seeds[0], data="synthetic", synthetic_preset="easy",
                synthetic_n_train=5_000, synthetic_n_test=1_280, d_hidden=128, num_blocks=4,
                epochs=80, lr=1e-3, schedule="constant", augment=False)
    base.update(profile.gain_fit)
    return TrainConfig(**base)


def run_fit(profile: Profile, results_dir: str | Path, *, progress: bool = True) -> TrainResult:
    """Train (or reuse: same config, same run key) the fit run under `<results_dir>/runs`."""
    import dataclasses
    config = dataclasses.replace(fit_config(profile), progress=progress)
    return train(config, runs_root=runs_root(results_dir))


def fit_report(result: TrainResult, mode: str = "paper"):
    """`diagnose` of the fit run on its own eval batches (the data the run was trained with),
    its final acc_eval as headline."""
    config = result.config
    batches = result.data.eval_batches(config.eval_batches, config.eval_batch_size)
    return diagnose(result.model, batches,
                    headline_acc=result.trace[-1]["acc_eval"], method_name="BP (fit)",
                    notes=f"{fit_stamp(config)}, {config.epochs} epochs at a constant lr {config.lr:g}",
                    mode=mode)


def gain_curve(result: TrainResult, thresholds: Optional[DiagnosticThresholds] = None) -> dict:
    """Per trace entry: the step, median ||g_L|| (paper scale), the deepest backward gain, the
    median output error ||e|| and the accuracy; and (b)'s and (e)'s floors with the first step
    each curve is under its own (None: never)."""
    t = DiagnosticThresholds() if thresholds is None else thresholds
    steps_per_epoch = math.ceil(result.config.synthetic_n_train / result.config.batch_size)
    reports = entry_reports(result.trace, t)  # null: non-finite when written, read as NaN
    curve = {"steps": [epoch * steps_per_epoch for epoch in reports],
             "epochs": list(reports),
             "g_L": [DIAGNOSTICS["b"].value(r) for r in reports.values()],
             "gain_L": [DIAGNOSTICS["e"].value(r) for r in reports.values()],
             "error_norm": [nan_if_none(r.output_error_norm) for r in reports.values()],
             "acc_eval": [r.headline_acc for r in reports.values()],
             "b_floor": t.g_norm_floor, "e_floor": t.backward_gain_floor}
    curve["g_L_under_floor_from_step"] = first_under(curve["g_L"], curve["steps"], t.g_norm_floor)
    curve["gain_under_floor_from_step"] = first_under(curve["gain_L"], curve["steps"],
                                                      t.backward_gain_floor)
    return curve


def first_under(values: Sequence[float], steps: Sequence[int], floor: float) -> Optional[int]:
    """The first step whose value is under `floor`, or None."""
    return next((s for s, v in zip(steps, values) if v < floor), None)


def save_gain_curve(result: TrainResult, profile: Profile, results_dir: str | Path,
                    name: str = GAIN_CURVE_NAME):
    """The fit run's median ||g_L|| and backward gain against training steps, with (b)'s and
    (e)'s floors: ||g_L|| crosses its floor as the error vanishes; the gain does not."""
    t = DiagnosticThresholds()
    curve = gain_curve(result, t)
    with paper_style():
        fig, ax = new_figure(aspect=0.62)
        ax.plot(curve["steps"], curve["g_L"], color="C0", label="median ‖g_L‖ (paper scale)")
        ax.plot(curve["steps"], curve["gain_L"], color="C2", label="backward gain (e)")
        ax.plot(curve["steps"], curve["error_norm"], color="0.5", ls="-.", lw=0.9,
                label="median output error ‖e‖")
        ax.axhline(t.g_norm_floor, color="C0", ls="--", lw=0.8, label=f"(b) floor {t.g_norm_floor:.0e}")
        ax.axhline(t.backward_gain_floor, color="C2", ls="--", lw=0.8,
                   label=f"(e) floor {t.backward_gain_floor:.0e}")
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_title(f"BP fitting the data ({fit_stamp(result.config)})")
        figure_legend(fig, ncol=3)
        meta = profile_metadata(profile, seeds=[result.config.seed], stamp=fit_stamp(result.config),
                                config=result.config.to_dict())
        paths = save_figure(fig, name, numbers=curve, metadata=meta,
                            outdir=Path(results_dir) / "figures")
    return fig, paths


def separation_of(table, fit: Optional[object] = None, *, healthy_rules: Sequence[str] = ("bp",),
                  failing_rules: Sequence[str] = ("dfa",)) -> tuple[Separation, dict]:
    """Threshold separation over the audit table's runs: `healthy_rules`' per-seed reports (and
    the fit run's, when given) as healthy, `failing_rules`' as failing. Returns it and the
    labels of the runs on each side."""
    healthy = [a for a in table.audits if a.rule in healthy_rules]
    failing = [a for a in table.audits if a.rule in failing_rules]
    reports = [a.report for a in healthy] + ([fit] if fit is not None else [])
    labels = {"healthy": [f"{a.rule} seed {a.seed}" for a in healthy]
              + (["bp fit run"] if fit is not None else []),
              "failing": [f"{a.rule} seed {a.seed}" for a in failing]}
    return threshold_separation(reports, [a.report for a in failing]), labels


PAPER_COLUMN = "paper (CIFAR-10, quoted)"
SEPARATION_COLUMNS = ("diagnostic", "fires", "healthy (min … max)", "failing (min … max)",
                      "separating thresholds", "width", "default",
                      "default margins (low / high)", PAPER_COLUMN)


def paper_interval(key: str) -> str:
    """The paper's own separation for a diagnostic, as text ("not reported" otherwise)."""
    return published.SEPARATION.get(key, {}).get("text", "not reported")


def separation_rows(sep: Separation) -> list[dict]:
    return [{**row, PAPER_COLUMN: paper_interval(r.key)} for row, r in zip(sep.table(), sep.rows)]


def save_separation(sep: Separation, labels: dict, profile: Profile, results_dir: str | Path,
                    name: str = SEPARATION_NAME):
    """Table (csv, booktabs tex, JSON) and figure (PDF, PNG, JSON) of the separation."""
    rows = separation_rows(sep)
    meta = profile_metadata(profile, runs=labels)
    numbers = {**sep.to_dict(), "runs": labels, "paper": published.SEPARATION,
               "paper_source": published.SOURCE}
    caption = ("Threshold separation: per diagnostic, the thresholds that pass every healthy run "
               f"({', '.join(labels['healthy'])}) and fire every failing run "
               f"({', '.join(labels['failing'])}); width in decades for (a), (b), (e). "
               f"The paper's intervals are quoted from {published.SOURCE}.")
    return save_table_and_figure(rows, name, SEPARATION_COLUMNS, meta, caption, numbers,
                                 results_dir, lambda: separation_figure(sep))


def separation_figure(sep: Separation):
    """One strip per diagnostic: healthy (o) and failing (x) statistics, the separating interval
    shaded, the default threshold dashed, the paper's interval hatched where it reported one."""
    fig, axes = new_figure(len(sep.rows), 1, aspect=0.16 * len(sep.rows) + 0.12)
    axes = [axes] if len(sep.rows) == 1 else list(axes)
    for ax, r in zip(axes, sep.rows):
        diag = DIAGNOSTICS[r.key]
        pts = [v for rng in (r.healthy_range, r.failing_range) if rng for v in rng]
        pts.append(r.default)
        if r.scale == "log":
            ax.set_xscale("log")
        if r.interval is not None:
            ax.axvspan(*r.interval, color="C2", alpha=0.18, lw=0, label="separating thresholds")
        p = published.SEPARATION.get(r.key)
        if p is not None:
            ax.axvspan(*p["interval"], facecolor="none", edgecolor="0.4", hatch="///", lw=0,
                       label="paper's interval")
            pts += list(p["interval"])
        ax.axvline(r.default, color="k", ls="--", lw=0.9, label="default threshold")
        for y, rng, marker, colour in ((1, r.healthy_range, "o", "C2"),
                                       (0, r.failing_range, "x", "C3")):
            if rng is not None:
                ax.plot(list(rng), [y, y], color=colour, lw=2.5, alpha=0.5)
                ax.plot(list(rng), [y, y], marker, color=colour)
        finite = [v for v in pts if math.isfinite(v) and (r.scale != "log" or v > 0)]
        if finite:
            lo, hi = min(finite), max(finite)
            pad = (hi / lo) ** 0.08 if r.scale == "log" and lo > 0 else None
            if pad:
                ax.set_xlim(lo / pad, hi * pad)
            else:
                span = (hi - lo) or 1.0
                ax.set_xlim(lo - 0.08 * span, hi + 0.08 * span)
        ax.set_yticks([0, 1], ["failing", "healthy"])
        ax.set_ylim(-0.6, 1.6)
        ax.set_title(f"{diag.label} (fires {r.direction})", loc="left")
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    handles = [Patch(color="C2", alpha=0.18, label="separating thresholds"),
               Patch(facecolor="none", edgecolor="0.4", hatch="///", label="paper's interval"),
               Line2D([], [], color="k", ls="--", lw=0.9, label="default threshold"),
               Line2D([], [], color="C2", marker="o", ls="", label="healthy runs"),
               Line2D([], [], color="C3", marker="x", ls="", label="failing runs")]
    figure_legend(fig, ncol=5, handles=handles, labels=[h.get_label() for h in handles])
    return fig
