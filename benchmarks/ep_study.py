"""EP's relaxation, measured: credit against BP, stability, cost and accuracy (docs/rules.md, EP).

    python benchmarks/ep_study.py [--epochs 5] [--threads 2] [--json out.json]

The paper does not publish EP's beta, T or eta. On the synthetic data (or CIFAR-10 when it is on
disk) at the paper's size (d=256, L=4, batch 128), at the smoke profile's beta (0.01), eta 0.2:

1. credit quality, at random init and after 3 epochs of BP: per layer, the mean per-sample cosine
   of EP's credit with the exact per-sample BP gradient g_k on the protocol's eval batches, and the
   relative error ||a_k - g_k|| / ||g_k||, for the relaxation before (gradient descent on the
   states themselves, "states") and `ep.relax` (on their displacements) with momentum mu, at
   several T; then the smallest T of each that is at least as good at every layer as the states'
   T = 10 (the smoke profile's before) and T = 20 (the default before); a few beta too;
2. stability: the energy's largest curvature lambda_max (power iteration on its Hessian in the
   states, float64), so eta * lambda_max against the bound, 2 (gradient descent) or 2 (1 + mu)
   (heavy ball), at init, after BP and after each EP training below;
3. cost: ms per training step, EP beside BP and DFA, interleaved rounds in this process, and
   EP's step over DFA's;
4. accuracy after `--epochs` epochs (seed 42) of BP, DFA, EP before and after at a few T, and the
   frozen-blocks baseline of EP at the chosen T.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_arrays, load_average, step_ms  # noqa: E402

from fa_nb_utils.alignment import per_sample_cosine  # noqa: E402
from fa_nb_utils.config import TrainConfig  # noqa: E402
from fa_nb_utils.data import DeviceData  # noqa: E402
from fa_nb_utils.ep import EP, EPOptions  # noqa: E402
from fa_nb_utils.io import write_json_atomic  # noqa: E402
from fa_nb_utils.model import ResidualMLP  # noqa: E402
from fa_nb_utils.rules import StackedBlocks, bp_credits  # noqa: E402
from fa_nb_utils.trainer import train  # noqa: E402

BETA, ETA = 0.01, 0.2
OLD = ("states", 0.0)  # the relaxation before: gradient descent on the states themselves
CANDIDATES = (("displacements", 0.0), ("displacements", 0.5), ("displacements", 0.7))
STEPS = (5, 6, 8, 10, 20, 40)
REFERENCES = (10, 20)  # the smoke profile's T and the default T before


def old_credits(model, free, y, beta, steps, eta):
    """EP's credit as computed before: T gradient steps on the stacked states h (not their
    displacements), the errors h_{l+1} - h_l - f_l(h_l) at the end (residual models)."""
    branches, s = StackedBlocks(model), torch.stack([h.detach() for h in free])
    target0 = s[0]

    def errors(s):
        return torch.cat([(s[0] - target0)[None], s[1:] - s[:-1] - branches(s[:-1])])

    with torch.enable_grad():
        for _ in range(steps):
            s = s.detach().requires_grad_(True)
            cost = F.cross_entropy(model.readout(s[-1]), y, reduction="sum")
            (g,) = torch.autograd.grad(0.5 * errors(s).pow(2).sum() + beta * cost, s)
            s = s - eta * g
    with torch.no_grad():
        return list((-errors(s.detach()) / beta).unbind(0))


class StatesEP(EP):
    """EP with the relaxation before (`old_credits`): one-sided, error credit."""

    def credits_from_states(self, model, free, y):
        o = self.options
        return old_credits(model, free, y, o.beta, o.steps, o.step_size)


@contextlib.contextmanager
def states_relaxation():
    """While active, every EP rule (the trainer's too) uses the relaxation before."""
    new = EP.credits_from_states
    EP.credits_from_states = StatesEP.credits_from_states
    try:
        yield
    finally:
        EP.credits_from_states = new


def make_ep(model, kind, mu, steps, beta=BETA):
    cls = StatesEP if kind == "states" else EP
    return cls(model, EPOptions(beta=beta, steps=steps, step_size=ETA, momentum=mu),
               torch.Generator().manual_seed(0))


def quality(model, x, y, g, kind, mu, steps, beta=BETA):
    a = make_ep(model, kind, mu, steps, beta).credits(model, x, y)
    rel = [float((ak.double() - gk.double()).norm() / gk.double().norm()) for ak, gk in zip(a, g)]
    cos = [float(np.nanmean(per_sample_cosine(ak, gk)[0].numpy())) for ak, gk in zip(a, g)]
    return {"relaxation": kind, "momentum": mu, "steps": steps, "beta": beta, "cosine": cos,
            "rel_error": rel}


def label(row):
    mu = f", mu {row['momentum']:g}" if row["relaxation"] != "states" else ""
    return f"{row['relaxation']}{mu}, T {row['steps']}"


def print_row(row):
    print(f"  {label(row):<30} cos " + " ".join(f"{v:+.3f}" for v in row["cosine"])
          + " | rel err " + " ".join(f"{v:.3f}" for v in row["rel_error"]), flush=True)


def credit_table(model, x, y):
    """Every relaxation at every T (beta 0.01, eta 0.2), rows printed as they come."""
    g = bp_credits(model, x, y)
    rows = []
    for kind, mu in (OLD, *CANDIDATES):
        for t in STEPS:
            rows.append(quality(model, x, y, g, kind, mu, t))
            print_row(rows[-1])
    return rows


def smallest_matching(rows):
    """Per relaxation and per reference T of the states' relaxation: the smallest T whose cosine
    is at least the reference's at every layer (None when no T in the table is)."""
    ref = {r["steps"]: r["cosine"] for r in rows if r["relaxation"] == OLD[0]}
    out = {}
    for kind, mu in CANDIDATES:
        mine = sorted((r for r in rows if (r["relaxation"], r["momentum"]) == (kind, mu)),
                      key=lambda r: r["steps"])
        for t_ref in REFERENCES:
            ok = [r["steps"] for r in mine
                  if all(c >= c_ref for c, c_ref in zip(r["cosine"], ref[t_ref]))]
            out[f"{kind}, mu {mu:g} vs states T {t_ref}"] = ok[0] if ok else None
    return out


def curvature(model, x, iters=30):
    """lambda_max of the energy's Hessian in the states at the free states (float64; beta * CE's
    curvature left out), by power iteration on Hessian-vector products: the largest over samples."""
    m = ResidualMLP(model.input_dim, model.d_hidden, model.num_classes, model.num_blocks,
                    residual=model.residual, seed=0).double()
    m.load_state_dict(model.state_dict())
    m.eval()
    with torch.no_grad():
        _, hs = m(x.double(), return_hidden=True)
    hf = torch.stack(hs)
    branches = StackedBlocks(m)
    with torch.no_grad():
        f_free = branches(hf[:-1])
    d = torch.zeros_like(hf, requires_grad=True)
    df = branches(hf[:-1] + d[:-1]) - f_free
    rest = d[1:] - d[:-1] - df if m.residual else d[1:] - df
    energy = 0.5 * (d[0].pow(2).sum() + rest.pow(2).sum())
    (grad,) = torch.autograd.grad(energy, d, create_graph=True)
    v = torch.randn(hf.shape, generator=torch.Generator().manual_seed(0), dtype=hf.dtype)
    lam = 0.0
    for _ in range(iters):
        v = v / v.norm()
        (hv,) = torch.autograd.grad(grad, d, grad_outputs=v, retain_graph=True)
        lam = float((hv * v).sum())
        v = hv
    return lam


def print_stability(name, lam, mus=(0.0, 0.5, 0.7)):
    bounds = " ".join(f"mu {mu:g}: {ETA * lam / (2 * (1 + mu)):.2f}" for mu in mus)
    print(f"  {name:<34} lambda_max {lam:6.2f}; eta * lambda_max / bound ({ETA:g}): {bounds}",
          flush=True)


def step_cost(data, cases, rounds, n=8, warmup=2):
    """ms per training step of each (label, rule name, options, kind) (`_common.step_ms`; kind
    "states": the relaxation before), the median over interleaved rounds."""
    spec = [(name, opts, lambda m, o=opts: StatesEP(m, EPOptions(**o), torch.Generator()))
            if kind == "states" else (name, opts) for _, name, opts, kind in cases]
    times = step_ms(data, spec, rounds=rounds, n=n, warmup=warmup)
    return {c[0]: float(np.median(t)) for c, t in zip(cases, times)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=5, help="accuracy runs' epochs (0: none)")
    p.add_argument("--steps", type=int, default=EPOptions().steps,
                   help="T of the accuracy runs' frozen baseline (default: EPOptions')")
    p.add_argument("--momentum", type=float, default=EPOptions().momentum,
                   help="mu of the accuracy runs (default: EPOptions')")
    p.add_argument("--rounds", type=int, default=7, help="cost: interleaved rounds")
    p.add_argument("--data-root", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = load_average()
    arrays, source = load_arrays(args.data_root, 10_000, 2_000)
    data = DeviceData.from_cifar(arrays, name=source)
    batches = data.eval_batches()
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    result = {"data": source, "threads": args.threads, "torch": torch.__version__,
              "beta": BETA, "eta": ETA, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "load_average_start": load_start}
    print(f"data: {source}; {args.threads} threads; load average {load_start}; beta {BETA}, "
          f"eta {ETA}; credit vs BP on the eval batches ({len(y)} samples)")
    base = dict(data=source, seed=42, progress=False, d_hidden=256)
    models = {"random init": ResidualMLP(data.input_dim, 256, data.num_classes, 4, seed=42),
              "after 3 epochs of BP": train(TrainConfig(rule="bp", epochs=3, **base),
                                            data=data).model}
    for name, model in models.items():
        print(f" {name}:")
        rows = credit_table(model, x, y)
        match = smallest_matching(rows)
        for k, v in match.items():
            print(f"   smallest T with a cosine >= at every layer, {k}: {v}")
        result[f"credit, {name}"] = {"rows": rows, "smallest_matching": match}
    bp3 = models["after 3 epochs of BP"]
    g = bp_credits(bp3, x, y)
    print(" after 3 epochs of BP, other beta and long relaxations (displacements):")
    more = [quality(bp3, x, y, g, "displacements", mu, t, beta)
            for mu in (0.0, 0.5) for beta in (0.1, 0.001) for t in (5, 10, 20)]
    more += [quality(bp3, x, y, g, "displacements", mu, t) for mu in (0.0, 0.5, 0.7)
             for t in (80, 200)]
    for row in more:
        print(f"  beta {row['beta']:<6g}", end="")
        print_row(row)
    result["credit, after 3 epochs of BP, more"] = more

    print("stability: the energy's largest curvature (float64, power iteration):")
    result["lambda_max"] = {}
    for name, model in models.items():
        result["lambda_max"][name] = lam = curvature(model, x)
        print_stability(name, lam)

    t_chosen, mu_chosen = args.steps, args.momentum
    chosen = {"steps": t_chosen, "momentum": mu_chosen}
    print(f"cost: ms per training step, batch 128, {args.rounds} interleaved rounds, median:")
    cases = [("BP", "bp", {}, None), ("DFA", "dfa", {}, None)]
    cases += [(f"EP states, T {t}", "ep", {"steps": t}, "states") for t in REFERENCES]
    cases += [(f"EP displacements, mu {mu:g}, T {t}", "ep", {"steps": t, "momentum": mu}, None)
              for mu in sorted({0.0, mu_chosen}) for t in sorted({5, 6, 8, 10, t_chosen})]
    cost = step_cost(data, cases, args.rounds)
    for k, v in cost.items():
        print(f"  {k:<34} {v:7.1f} ms   {v / cost['DFA']:.2f} x DFA   {v / cost['BP']:.2f} x BP")
    result["ms_per_step"] = cost

    result["accuracy"] = acc = {}
    if args.epochs:
        print(f"accuracy after {args.epochs} epochs (cosine schedule over them, seed 42):")
        runs = [("BP", "bp", {}, False, None), ("DFA", "dfa", {}, False, None)]
        runs += [(f"EP states, T {t}", "ep", {"steps": t}, False, "states") for t in REFERENCES]
        runs += [(f"EP displacements, mu {mu_chosen:g}, T {t}", "ep",
                  {"steps": t, "momentum": mu_chosen}, False, None)
                 for t in sorted({t_chosen, 10, 20})]
        runs += [(f"EP displacements, mu {mu_chosen:g}, T {t_chosen}, frozen", "ep", chosen,
                  True, None)]
        for key, name, opts, frozen, kind in runs:
            t0 = time.perf_counter()
            with states_relaxation() if kind == "states" else contextlib.nullcontext():
                res = train(TrainConfig(rule=name, rule_options=opts, freeze_blocks=frozen,
                                        epochs=args.epochs, **base), data=data)
            acc[key] = {"acc": res.trace[-1]["acc_eval"], "train_loss": res.trace[-1]["train_loss"],
                        "first_loss": res.trace[1]["train_loss"],
                        "seconds": time.perf_counter() - t0}
            print(f"  {key:<42} acc {acc[key]['acc']:.4f}  train loss "
                  f"{acc[key]['first_loss']:.3f} -> {acc[key]['train_loss']:.3f}  "
                  f"({acc[key]['seconds']:.0f} s)", flush=True)
            if name == "ep" and not frozen:
                lam = curvature(res.model, x)
                acc[key]["lambda_max"] = lam
                print_stability("  its blocks at the end:", lam)
    result["load_average_end"] = load_average()
    print(f"load average at the end: {result['load_average_end']}")
    if args.json:
        write_json_atomic(Path(args.json), result)
    return result


if __name__ == "__main__":
    main()
