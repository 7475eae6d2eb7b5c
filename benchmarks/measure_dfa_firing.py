"""Steps until DFA's (a) and (b) fire, against width, on the synthetic data (sizes the smoke profile).

    python benchmarks/measure_dfa_firing.py                    # widths 64 128 256, <= 120 epochs
    python benchmarks/measure_dfa_firing.py --widths 64 --max-epochs 60 --json out.json

For each width d (L=4), trains DFA on the standard synthetic set with the paper's per-step
schedule (cosine over as many steps as 100 CIFAR-10 epochs, 39,100) and replays the trace
(monitor.replay_trace: the protocol's (a), max per-block growth of the median ||h_l|| > 50, and
(b), deepest-layer median ||g_L|| < 1e-7 on the paper's scale) to find the first epoch at which
each fires; prints steps, seconds per step and wall time to each. Also trains BP and its
frozen-blocks baseline for `--bp-epochs` at each width, to check that the smoke budget keeps BP
>= 5 pp above the baseline.

Results (2026-11-22, 2-core CPU; 5,000 training images, seed 42, lr 1e-3, `--max-epochs 140`
= 5,600 DFA steps, BP and frozen-blocks BP for 4 epochs):
    d=64:  (a) never,          (b) never;  BP 0.446 vs frozen 0.424 (+2.1 pp)
    d=128: (a) never,          (b) never;  BP 0.480 vs frozen 0.437 (+4.3 pp)
    d=256: (a) at 3,480 steps, (b) never;  BP 0.523 vs frozen 0.447 (+7.7 pp)
The explosion needs the paper's width, which is why the smoke profile keeps d=256. The runs at
10,000 images and lr 2e-3 that fixed the rest of the smoke profile, and what they mean, are in
docs/measurements.md ("Smoke profile sizing").
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fa_nb_utils.data import cifar, synthetic  # noqa: E402
from fa_nb_utils.data import DeviceData  # noqa: E402
from fa_nb_utils.io import write_json_atomic  # noqa: E402
from fa_nb_utils.monitor import replay_trace  # noqa: E402
from fa_nb_utils.config import TrainConfig  # noqa: E402
from fa_nb_utils.trainer import train  # noqa: E402

PAPER_STEPS = 100 * 391  # 100 epochs of CIFAR-10 at batch 128


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--max-epochs", type=int, default=120)
    p.add_argument("--bp-epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    root = Path(args.data_root) if args.data_root else cifar.default_data_root()
    folder = synthetic.ensure_synthetic(root, "standard", n_train=args.n_train, n_test=2000)
    data = DeviceData.from_cifar(cifar.read_cifar10_folder(folder), name="synthetic")
    steps_per_epoch = data.steps_per_epoch(128)
    cosine_epochs = max(args.max_epochs, round(PAPER_STEPS / steps_per_epoch))
    base = dict(seed=args.seed, data="synthetic", progress=False, device="cpu",
                threads=args.threads, num_blocks=4)
    rows = []
    print(f"synthetic standard, {args.n_train} train images ({steps_per_epoch} steps/epoch), "
          f"L=4, seed {args.seed}; DFA cosine horizon {cosine_epochs} epochs "
          f"(= {cosine_epochs * steps_per_epoch} steps, the paper's {PAPER_STEPS})")
    print(f"{'d':>5} {'ms/step':>8} {'(a) epoch':>10} {'(a) steps':>10} {'(a) s':>7} "
          f"{'(b) epoch':>10} {'(b) steps':>10} {'(b) s':>7} {'BP':>6} {'frozen':>7} {'margin':>7}")
    for d in args.widths:
        t0 = time.perf_counter()
        res = train(TrainConfig(rule="dfa", epochs=args.max_epochs, cosine_epochs=cosine_epochs,
                                d_hidden=d, **base), data=data)
        seconds = time.perf_counter() - t0
        train_s = sum(e["seconds"] for e in res.trace)
        ms_step = 1e3 * train_s / (args.max_epochs * steps_per_epoch)
        rep = replay_trace(res.trace)
        fire = {}
        for key in ("a", "b"):
            row = rep[key]
            e = row.first_epoch if hasattr(row, "first_epoch") else row["first_epoch"]
            fire[key] = e
        bp = train(TrainConfig(rule="bp", epochs=args.bp_epochs, d_hidden=d, **base), data=data)
        fr = train(TrainConfig(rule="bp", epochs=args.bp_epochs, d_hidden=d, freeze_blocks=True,
                               **base), data=data)
        acc_bp, acc_fr = bp.trace[-1]["acc_eval"], fr.trace[-1]["acc_eval"]
        row = {"d": d, "ms_per_step": ms_step, "wall_s_dfa": seconds,
               "a_epoch": fire["a"], "b_epoch": fire["b"],
               "a_steps": None if fire["a"] is None else fire["a"] * steps_per_epoch,
               "b_steps": None if fire["b"] is None else fire["b"] * steps_per_epoch,
               "bp_acc": acc_bp, "frozen_acc": acc_fr, "margin_pp": 100 * (acc_bp - acc_fr)}
        rows.append(row)
        fmt = lambda v, f: "never" if v is None else format(v, f)
        secs = lambda st: None if st is None else st * ms_step / 1e3
        print(f"{d:>5} {ms_step:>8.2f} {fmt(row['a_epoch'], 'd'):>10} {fmt(row['a_steps'], 'd'):>10} "
              f"{fmt(secs(row['a_steps']), '.0f'):>7} {fmt(row['b_epoch'], 'd'):>10} "
              f"{fmt(row['b_steps'], 'd'):>10} {fmt(secs(row['b_steps']), '.0f'):>7} "
              f"{acc_bp:>6.3f} {acc_fr:>7.3f} {row['margin_pp']:>+7.1f}", flush=True)
    out = {"n_train": args.n_train, "steps_per_epoch": steps_per_epoch,
           "cosine_epochs": cosine_epochs, "bp_epochs": args.bp_epochs, "rows": rows}
    if args.json:
        write_json_atomic(Path(args.json), out)
    return out


if __name__ == "__main__":
    main()
