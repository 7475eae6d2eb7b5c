"""EP's hyper-parameters, measured: credit error against BP vs cost, and accuracy (docs/rules.md).

    python benchmarks/ep_study.py [--epochs 5] [--json out.json]

The paper does not publish EP's beta, T or eta. This script measures, on the synthetic data (or
CIFAR-10 when it is on disk) at the paper's size (d=256, L=4, batch 128):

1. credit quality: per layer, the relative error ||a_k - g_k|| / ||g_k|| and the mean per-sample
   cosine of EP's credit with the exact per-sample BP gradient g_k, on the protocol's eval batches,
   at random init and after a short BP training (larger block Jacobians), for a grid of beta x T
   (eta fixed: the relaxation's stable step; the curvature along a layer is 1 + |I + df/dh|^2);
2. cost: ms per training step for each T, beside BP and DFA, interleaved;
3. accuracy: EP trained `--epochs` epochs at a few T (and its frozen-blocks baseline at the
   chosen T), beside BP and DFA.

Results recorded in docs/rules.md (EP) and docs/measurements.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_arrays, step_ms  # noqa: E402

from fa_nb_utils.alignment import per_sample_cosine  # noqa: E402
from fa_nb_utils.data import DeviceData  # noqa: E402
from fa_nb_utils.io import write_json_atomic  # noqa: E402
from fa_nb_utils.rules import bp_credits, build_rule  # noqa: E402
from fa_nb_utils.config import TrainConfig  # noqa: E402
from fa_nb_utils.trainer import train  # noqa: E402


def credit_quality(model, x, y, betas, steps, eta, nudge="one_sided"):
    g = bp_credits(model, x, y)
    out = []
    for beta in betas:
        for t in steps:
            rule = build_rule("ep", model, {"beta": beta, "steps": t, "step_size": eta,
                                            "nudge": nudge}, torch.Generator().manual_seed(0))
            a = rule.credits(model, x, y)
            rel = [float((ak - gk).norm() / gk.norm()) for ak, gk in zip(a, g)]
            cos = [float(np.nanmean(per_sample_cosine(ak, gk)[0].numpy()))
                   for ak, gk in zip(a, g)]
            out.append({"beta": beta, "steps": t, "nudge": nudge, "rel_error": rel, "cosine": cos})
            print(f"  {nudge[:3]} beta {beta:<6g} T {t:>3}: rel err " + " ".join(f"{v:.3f}" for v in rel)
                  + " | cos " + " ".join(f"{v:+.3f}" for v in cos), flush=True)
    return out


def step_cost(data, rules, rounds=5):
    return {f"{name} {opts}": float(np.median(v))
            for (name, opts), v in zip(rules, step_ms(data, rules, rounds=rounds))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--data-root", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    arrays, source = load_arrays(args.data_root, 10_000, 2_000)
    data = DeviceData.from_cifar(arrays, name=source)
    x, y = torch.cat([b[0] for b in data.eval_batches()]), torch.cat([b[1] for b in data.eval_batches()])
    result = {"data": source, "threads": args.threads, "torch": torch.__version__}
    betas, steps, eta = (0.1, 0.01, 0.001), (5, 10, 20, 40, 80), 0.2
    print(f"data: {source}; credit error vs BP on the eval batches (eta {eta})")
    from fa_nb_utils.model import ResidualMLP
    print(" random init:")
    init = ResidualMLP(data.input_dim, 256, data.num_classes, 4, seed=42)
    result["credit_init"] = credit_quality(init, x, y, betas, steps, eta)
    base = dict(data=source, epochs=3, seed=42, progress=False, d_hidden=256)
    bp3 = train(TrainConfig(rule="bp", **base), data=data).model
    print(" after 3 epochs of BP:")
    result["credit_bp3"] = credit_quality(bp3, x, y, betas, steps, eta)
    print(" after 3 epochs of BP, symmetric nudge (+beta and -beta, twice the cost):")
    result["credit_bp3_symmetric"] = credit_quality(bp3, x, y, (0.1, 0.01), (10, 20, 80), eta,
                                                    nudge="symmetric")
    print(" after 3 epochs of BP, eta 0.4 (twice the default step):")
    result["credit_bp3_eta04"] = credit_quality(bp3, x, y, (0.01,), (20, 40, 80), 0.4)

    print("cost (ms per training step, batch 128, interleaved, median of rounds):")
    cost = step_cost(data, [("bp", {}), ("dfa", {})] + [("ep", {"steps": t}) for t in (5, 10, 20, 40)])
    for k, v in cost.items():
        print(f"  {k:<24} {v:7.1f}")
    result["ms_per_step"] = cost

    print(f"accuracy after {args.epochs} epochs (cosine schedule over them, seed 42):")
    acc = {}
    for name, opts, frozen in ([("bp", {}, False), ("dfa", {}, False)]
                               + [("ep", {"steps": t}, False) for t in (5, 10, 20)]
                               + [("ep", {"steps": 10, "nudge": "symmetric"}, False)]
                               + [("ep", {"steps": 10}, True)]):
        t0 = time.perf_counter()
        res = train(TrainConfig(rule=name, rule_options=opts, freeze_blocks=frozen,
                                **{**base, "epochs": args.epochs}), data=data)
        key = f"{name} {opts}{' frozen' if frozen else ''}"
        acc[key] = {"acc": res.trace[-1]["acc_eval"], "train_loss": res.trace[-1]["train_loss"],
                    "first_loss": res.trace[1]["train_loss"], "seconds": time.perf_counter() - t0}
        print(f"  {key:<30} acc {acc[key]['acc']:.4f}  train loss {acc[key]['first_loss']:.3f} -> "
              f"{acc[key]['train_loss']:.3f}  ({acc[key]['seconds']:.0f} s)", flush=True)
    result["accuracy"] = acc
    if args.json:
        write_json_atomic(Path(args.json), result)
    return result


if __name__ == "__main__":
    main()
