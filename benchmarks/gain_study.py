"""Where healthy and collapsed networks put the backward gain (e), and how (b) and (e) separate them.

Diagnoses every finished run under one or more runs folders (the trainer's `<runs>/<name>/
checkpoint.pt`), on each run's own eval batches, and prints one line per run: rule, seed, λ,
epochs, accuracy, median ||h_L||, ||g_L|| (paper scale), the deepest backward gain, the median
output error ||e||, (a)/(b)/(e) and the paper and robust verdicts. With --json, writes them.

    python benchmarks/gain_study.py results/runs [more/runs ...] --json gains.json

Which runs count as healthy and which as collapsed is the reader's call from these columns; the
numbers behind `DiagnosticThresholds.backward_gain_floor` (docs/protocol.md, "(e) the backward
gain, and the paper and robust modes")
came from this script on the smoke reproduction's runs and the slow tests' long runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from fa_nb_utils.checkpoint import load_checkpoint
from fa_nb_utils.measures import accuracy
from fa_nb_utils.protocol import diagnose
from fa_nb_utils.config import TrainConfig, build_model, load_data


def study(run_dir: Path, data_cache: dict) -> dict | None:
    ckpt = run_dir / "checkpoint.pt"
    if not ckpt.is_file():
        return None
    state = load_checkpoint(ckpt, map_location="cpu")
    cfg = dict(state["config"], progress=False, device="cpu")
    config = TrainConfig.from_dict(cfg)
    key = json.dumps({k: cfg.get(k) for k in ("data", "data_root", "synthetic_preset",
                                              "synthetic_n_train", "synthetic_n_test",
                                              "limit_train")}, sort_keys=True)
    if key not in data_cache:
        data_cache[key] = load_data(config, torch.device("cpu"))
    data = data_cache[key]
    model = build_model(config, data)
    model.load_state_dict(state["model"])
    report = diagnose(model, data.eval_batches(config.eval_batches, config.eval_batch_size),
                      headline_acc=accuracy(model, data.test_x, data.test_y))
    return {"run": run_dir.name, "rule": config.rule, "seed": config.seed,
            "frozen": config.freeze_blocks, "lambda": config.penalty_lambda,
            "epochs": state.get("epoch"), "lr": config.lr, "preset": config.synthetic_preset,
            "acc": report.headline_acc, "h_L": report.residual_norms[-1],
            "g_L": report.bp_grad_norms[-1], "gain_L": report.backward_gains[-1],
            "error_norm": report.output_error_norm, "max_growth": report.max_block_growth,
            "fired": {k: v for k, v in report.fired.items() if v},
            "verdicts": report.verdicts, "b_cause": report.b_cause}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="runs folders (each holds <run>/checkpoint.pt)")
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows, cache = [], {}
    for root in map(Path, args.runs):
        for run_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            row = study(run_dir, cache)
            if row is None:
                continue
            rows.append(row)
            print(f"{row['run']:<40} acc {row['acc']:.3f} h_L {row['h_L']:.2e} "
                  f"g_L {row['g_L']:.2e} gain_L {row['gain_L']:.2e} |e| {row['error_norm']:.2e} "
                  f"fired {''.join(sorted(row['fired'])) or '-'} b_cause {row['b_cause']}",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
