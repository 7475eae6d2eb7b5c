"""Probe: does DFA's embedding grow when the data keep a persistent, weak class signal?

Trains the smoke config (d=256, L=4, 10,000 images, batch 128, AdamW lr 2e-3, wd 0.01, cosine
over 500 epochs) on variants of the synthetic generator and records per epoch:
  ||h_0||, ||h_L||, ||g_L|| (the trace's protocol medians), max per-block growth, acc,
  and coherence of the embedding's DFA gradient G = B_0 E[e x^T] (train set, no augmentation):
    Ef     ||E[e x^T]||_F over the train set (C x D)
    bcoh   ||mean_b G_b|| / rms_b ||G_b|| over the 79 train batches (1 = all batches agree)
    gcos   cosine of G between consecutive epochs
    ucos   cosine of the embed weight's update over consecutive epochs (W_t - W_{t-1})
    du     ||W_t - W_{t-1}||_F of the embed weight over the epoch

    PYTHONPATH=. python benchmarks/embed_growth_probe.py --variant colour --rule dfa --seed 42 --epochs 8
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fa_nb_utils import trainer
from fa_nb_utils.data import DeviceData
from fa_nb_utils.data import synthetic as S
from fa_nb_utils.data.cifar import CifarArrays
from fa_nb_utils.diagnostics import DIAGNOSTICS, block_growth
from fa_nb_utils.trace import entry_reports
from fa_nb_utils.rules import output_error

# ---------------------------------------------------------------------------------------------
# the generator variants

VARIANTS = {
    "standard": {},
    # class-conditional global colour/brightness: per-image offset (constant over pixels) in the
    # three colour directions, class mean `cm` (in background std), per-image spread `cs`
    "colour": {"colour": (0.3, 1.0)},
    "colour_s": {"colour": (0.15, 1.0)},
    "colour_l": {"colour": (0.6, 1.0)},
    "colour_nolab": {"colour": (0.3, 1.0), "spec": {"label_noise": 0.1}},
    # class mean spread over M smooth random directions (background-like images), amplitude amp,
    # each image's coefficients spread by s
    "manydir": {"manydir": (200, 0.4, 1.0)},
    "manydir_l": {"manydir": (200, 0.8, 1.0)},
    "manydir50": {"manydir": (50, 0.4, 1.0)},
    # luminance-only class-conditional brightness, large share of the pixel variance
    "bright": {"colour": (1.0, 2.0)},
    # no label noise, 8 factors (256 cells): the label is a function of x that DFA fits slowly
    "hard": {"spec": {"label_noise": 0.0, "n_factors": 8, "amplitude": 0.35, "proto_amplitude": 0.2}},
    "hard_colour": {"spec": {"label_noise": 0.0, "n_factors": 8, "amplitude": 0.35}, "colour": (0.6, 1.0)},
    "nonoise": {"spec": {"label_noise": 0.0}},
    "hard_bright": {"spec": {"label_noise": 0.0, "n_factors": 8, "amplitude": 0.35}, "colour": (1.0, 2.0)},
    "bright_xl": {"colour": (2.0, 3.0)},
    "hard_ln2_bright": {"spec": {"label_noise": 0.2, "n_factors": 8, "amplitude": 0.35}, "colour": (1.0, 2.0)},
    "ln2_colour": {"spec": {"label_noise": 0.2}, "colour": (0.6, 1.0)},
    "nonoise_bright": {"spec": {"label_noise": 0.0}, "colour": (1.0, 2.0)},
    "ln1_bright": {"spec": {"label_noise": 0.1}, "colour": (1.0, 2.0)},
    "ln2_bright": {"spec": {"label_noise": 0.2}, "colour": (1.0, 2.0)},
    "hard_ln1_bright": {"spec": {"label_noise": 0.1, "n_factors": 8, "amplitude": 0.35}, "colour": (1.0, 2.0)},  # = bright (standard spec + luminance/colour offset)
    "hard_colour2": {"spec": {"label_noise": 0.1, "n_factors": 8, "amplitude": 0.35}, "colour": (0.6, 1.0)},
}


def _colour_offset(spec, source, rng, cm, cs):
    """(n, 3, 32, 32): per-image colour offset, mean cm * mu[class] and spread cs."""
    mu = np.random.default_rng([spec.seed, 11]).standard_normal((spec.num_classes, 3))
    coef = cm * mu[source] + cs * rng.standard_normal((len(source), 3))
    return np.einsum("nk,kc->nc", coef, S.COLOURS)[:, :, None, None] * np.ones((1, 1, S.IMG, S.IMG))


def _manydir(spec, source, rng, m, amp, s):
    dirs = S.background(np.random.default_rng([spec.seed, 12]), m)
    dirs /= np.sqrt((dirs ** 2).mean(axis=(1, 2, 3), keepdims=True))
    mu = np.random.default_rng([spec.seed, 13]).standard_normal((spec.num_classes, m))
    coef = amp * (mu[source] + s * rng.standard_normal((len(source), m))) / np.sqrt(m)
    return np.einsum("nj,jcyx->ncyx", coef, dirs, optimize=True)


def generate_variant(spec: S.SyntheticSpec, n: int, split_seed: int, opts: dict):
    """generate_arrays (synthetic.py) with extra class-conditional components, added before the
    renormalisation to unit per-pixel variance (so CIFAR's per-channel mean/std still hold)."""
    def extra(source):
        xrng = np.random.default_rng([spec.seed, 20, split_seed])   # extra draws: own stream
        more, var = 0.0, 0.0
        if "colour" in opts:
            cm, cs = opts["colour"]
            more, var = more + _colour_offset(spec, source, xrng, cm, cs), var + cs ** 2 + cm ** 2
        if "manydir" in opts:
            m, amp, s = opts["manydir"]
            more, var = more + _manydir(spec, source, xrng, m, amp, s), var + amp ** 2 * (1 + s ** 2)
        return more, var

    return S.generate_arrays(spec, n, split_seed, extra=extra)


def make_data(variant: str, n_train=10_000, n_test=2_000) -> DeviceData:
    opts = VARIANTS[variant]
    spec = S.SyntheticSpec(**opts.get("spec", {}))
    tx, ty = generate_variant(spec, n_train, 0, opts)
    vx, vy = generate_variant(spec, n_test, 1, opts)
    arrays = CifarArrays(tx, ty, vx, vy, S.LABEL_NAMES, Path("/nonexistent"), f"probe-{variant}")
    for name, a in (("train", tx),):
        m = a.reshape(len(a), 3, -1).mean(axis=(0, 2)); s = a.reshape(len(a), 3, -1).transpose(1, 0, 2).reshape(3, -1).std(axis=1)
        print(f"[{variant}] pixel mean {np.round(m, 1)}  std {np.round(s, 1)} (CIFAR {S.CIFAR_MEAN_255} {S.CIFAR_STD_255})",
              file=sys.stderr)
    return DeviceData.from_cifar(arrays, device="cpu", augment=True, name=f"probe-{variant}")


# ---------------------------------------------------------------------------------------------
# per-epoch coherence numbers, hooked into the trainer's record()

STATE: dict = {}


@torch.no_grad()
def coherence(model, rule, data) -> dict:
    w = model.embed.weight.detach().clone()
    was = model.training
    model.eval()
    x = data.train_x.reshape(data.train_x.shape[0], -1)
    gs, es = [], []
    for i in range(0, x.shape[0], 128):
        xb, yb = x[i:i + 128], data.train_y[i:i + 128]
        e = output_error(model(xb), yb)
        eb = e.T @ xb / len(yb)               # C x D
        es.append(eb * len(yb))
        gs.append(eb)
    model.train(was)
    E = torch.stack(es).sum(0) / x.shape[0]
    out = {"Ef": float(E.norm())}
    if hasattr(rule, "feedback"):
        B0 = rule.feedback[0]                   # d x C
        Gb = torch.einsum("dc,bcx->bdx", B0, torch.stack(gs))
        G = Gb.mean(0)
        out["bcoh"] = float(G.norm() / Gb.pow(2).sum((1, 2)).mean().sqrt())
        if "G" in STATE:
            out["gcos"] = float(torch.nn.functional.cosine_similarity(G.flatten(), STATE["G"].flatten(), 0))
        STATE["G"] = G
    if "W" in STATE:
        du = w - STATE["W"]
        out["du"] = float(du.norm())
        if "dU" in STATE:
            out["ucos"] = float(torch.nn.functional.cosine_similarity(du.flatten(), STATE["dU"].flatten(), 0))
        STATE["dU"] = du
    STATE["W"] = w
    return out


_orig_record = trainer._Run.record


def _record(self, epoch, **extra):
    extra.update(coherence(self.model, self.rule, self.data))
    return _orig_record(self, epoch, **extra)


trainer._Run.record = _record


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="standard")
    ap.add_argument("--rule", default="dfa")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--out", default="results/embed_probe_runs")
    a = ap.parse_args()
    torch.set_num_threads(1)
    data = make_data(a.variant)
    cfg = trainer.TrainConfig(rule=a.rule, seed=a.seed, epochs=a.epochs, data="synthetic",
                              d_hidden=256, num_blocks=4, lr=2e-3, cosine_epochs=500,
                              threads=1, progress=False)
    t0 = time.time()
    res = trainer.train(cfg, data=data)
    fa = fb = None
    rows = []
    print(f"# {a.variant} {a.rule} seed {a.seed}  ({time.time() - t0:.0f} s)")
    print("ep   acc    h0       hL       gL      maxgr  growth/block               Ef      bcoh   gcos   ucos   du")
    reports = entry_reports(res.trace)
    for e in res.trace:
        r = reports[e["epoch"]]
        h, g = r.residual_norms, r.bp_grad_norms
        mg = DIAGNOSTICS["a"].value(r)
        if fa is None and r.fired["a"]:
            fa = e["epoch"]
        if fb is None and r.fired["b"]:
            fb = e["epoch"]
        gr = " ".join(f"{v:5.2f}" for v in block_growth(h))
        f = lambda k: f"{e[k]:6.3f}" if k in e else "   -  "
        print(f"{e['epoch']:2d} {e['acc_eval']:.3f} {h[0]:8.3g} {h[-1]:8.3g} {g[-1]:8.2e} {mg:6.2f}  {gr}  "
              f"{e.get('Ef', float('nan')):7.4f} {f('bcoh')} {f('gcos')} {f('ucos')} {e.get('du', float('nan')):6.3g}")
        rows.append({k: e.get(k) for k in ("epoch", "acc_eval", "Ef", "bcoh", "gcos", "ucos", "du")}
                    | {"h0": h[0], "hL": h[-1], "gL": g[-1], "maxgrowth": mg})
    print(f"(a) fires at epoch {fa}; (b) fires at epoch {fb}")
    Path(a.out).mkdir(parents=True, exist_ok=True)
    Path(a.out, f"{a.variant}-{a.rule}-s{a.seed}-e{a.epochs}.json").write_text(
        json.dumps({"variant": a.variant, "opts": VARIANTS[a.variant], "rule": a.rule, "seed": a.seed,
                    "fire_a": fa, "fire_b": fb, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
