"""Training logs for the tools researchers watch: a per-epoch callback, TensorBoard shipped.

    train(config, runs_root="runs", tensorboard="tb")      # tb/<run folder>/: one run each
    train(config, on_epoch=my_logger)                       # any logger: my_logger(entry)
    python -m fa_nb_utils.train --rule dfa --tensorboard tb

`train` hands `on_epoch` each new epoch's trace entry (trace.py) once it is checkpointed, so a
log never holds an epoch twice. `epoch_scalars` flattens an entry into the scalars any logger
takes; `monitor_entry` builds the same entry from a `Monitor` in a user's own loop.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .validation import is_finite_number

TENSORBOARD_EXTRA = "pip install 'fa-eval[tensorboard]'   (or: pip install tensorboard)"
SCALARS = ("acc_eval", "train_loss", "output_error_norm", "lr")
PER_LAYER = ("residual_norms", "bp_grad_norms", "backward_gains")


def _gamma(entry: dict) -> list:
    """Γ_l per layer when measured: the entry's protocol report's alignment."""
    alignment = (entry.get("protocol") or {}).get("alignment") or {}
    return list(alignment.get("per_layer") or [])


def epoch_scalars(entry: dict) -> dict[str, float]:
    """An epoch's scalars by tag: accuracy, train loss, ..., and per layer l `residual_norms/l`
    (‖h_l‖), `bp_grad_norms/l` (‖g_l‖), `backward_gains/l` and `gamma/l` (Γ_l) when measured.
    Numbers absent or non-finite (null in a saved trace) are left out."""
    out = {k: float(entry[k]) for k in SCALARS if is_finite_number(entry.get(k))}
    layers = {key: entry.get(key) or [] for key in PER_LAYER}
    layers["gamma"] = _gamma(entry)
    for key, values in layers.items():
        out.update({f"{key}/{l}": float(v) for l, v in enumerate(values)
                    if is_finite_number(v)})
    return out


def monitor_entry(monitor, epoch: int) -> Optional[dict]:
    """The entry of `epoch` for `on_epoch`, from a Monitor checked in a user's own loop (None if
    it did not check that epoch): accuracy, train loss, the report's per-layer numbers, Γ, stop."""
    rec = monitor.record_for(epoch)
    if rec is None:
        return None
    report = rec.get("report") or {}
    entry = {"epoch": epoch, "acc_eval": rec.get("acc_eval"), "train_loss": rec.get("train_loss"),
             **{k: report.get(k) for k in (*PER_LAYER, "output_error_norm") if k in report}}
    if report.get("alignment"):  # where the trainer's trace keeps it
        entry["protocol"] = {"alignment": report["alignment"]}
    if rec.get("stop_reason"):
        entry["stop_reason"] = rec["stop_reason"]
    return entry


def require_tensorboard() -> None:
    """ImportError naming the install command when the tensorboard package is missing."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"TensorBoard logging needs the tensorboard package: "
                          f"{TENSORBOARD_EXTRA}") from exc


class TensorBoardLogger:
    """`on_epoch` for TensorBoard: `epoch_scalars` at global step = epoch, a monitor's stop as
    text (tag `stop_reason`), in `log_dir`. The event file is created at the first entry, so a
    run reused without training writes nothing."""

    def __init__(self, log_dir: str | Path):
        require_tensorboard()
        self.log_dir = Path(log_dir)
        self._writer = None

    def __call__(self, entry: dict) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        step = int(entry["epoch"])
        for tag, value in epoch_scalars(entry).items():
            self._writer.add_scalar(tag, value, global_step=step)
        stop = entry.get("stop_reason")
        if stop:
            self._writer.add_text("stop_reason", f"stopped at epoch {step}: {stop['message']}",
                                  global_step=step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
