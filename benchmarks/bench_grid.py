"""Wall time of the training grid on each executor setting, in one run (ratios, same machine).

    python benchmarks/bench_grid.py                                  # the smoke profile's grid
    python benchmarks/bench_grid.py --epochs 3 --seeds 42            # a reduced grid, minutes
    python benchmarks/bench_grid.py --settings inprocess:1x2,process:2x1,dask:2x1 --json g.json
    python benchmarks/bench_grid.py --profile paper --data synthetic-cifar --settings \\
        inprocess:1x16,process:4x4 --device cuda                     # GPU machine: 1 vs 4 workers

Each setting ENGINE:WORKERSxTHREADS trains the same grid (`run_grid`: every registered rule x
seed, and each rule's frozen baseline, unless --rules/--seeds/--no-frozen narrow it) into a fresh
folder, timed end to end (engine start-up, data loading in the workers and the final loading of
every run included). The settings run one after another, in the order given, on the same data;
the table gives each one's wall time and its ratio to the first. It also says whether each
setting's runs equal the first's bit for bit (trace without wall times, and weights): expected
when the thread counts are equal, not otherwise (a different thread count may sum in another
order). Nothing is asserted: timings on shared machines drift (record the load average beside
them, which the output does).

`--data synthetic-cifar` makes the synthetic set CIFAR-sized (50,000 training images) for a paper
profile timing without CIFAR-10.
Not here: the executors (fa_nb_utils/paper/executors.py), the grid (experiments.py).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import cpu_model, load_average  # noqa: E402

from fa_nb_utils import __version__  # noqa: E402
from fa_nb_utils.io import write_json_atomic  # noqa: E402
from fa_nb_utils.paper.experiments import profile_data, run_grid  # noqa: E402
from fa_nb_utils.paper.profiles import get_profile  # noqa: E402


def parse_setting(text: str) -> dict:
    """ENGINE:WORKERSxTHREADS, e.g. process:2x1."""
    try:
        engine, shape = text.split(":")
        workers, threads = (int(v) for v in shape.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a setting is ENGINE:WORKERSxTHREADS (e.g. process:2x1), "
                                         f"got {text!r}") from None
    return {"label": text, "executor": engine, "workers": workers, "threads": threads}


def _runs(records):
    return [([{k: v for k, v in e.items() if k != "seconds"} for e in r.result.trace],
             r.result.model.state_dict()) for r in records]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        ta == tb and all(torch.equal(wa[k], wb[k]) for k in wa) for (ta, wa), (tb, wb) in zip(a, b))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="smoke")
    p.add_argument("--settings", default="inprocess:1x2,process:2x1,dask:2x1",
                   type=lambda text: [parse_setting(t) for t in text.split(",")],
                   help="comma-separated ENGINE:WORKERSxTHREADS, the first is the baseline")
    p.add_argument("--epochs", type=int, default=None, help="override the profile's epochs")
    p.add_argument("--seeds", default=None, help="comma-separated (default: the profile's)")
    p.add_argument("--rules", default=None, help="comma-separated (default: every rule)")
    p.add_argument("--no-frozen", action="store_true", help="leave out the frozen baselines")
    p.add_argument("--data", choices=("profile", "synthetic-cifar"), default="profile")
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    settings = args.settings
    profile = get_profile(args.profile)
    overrides = {}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.data == "synthetic-cifar":
        overrides.update(data="synthetic", synthetic_n_train=50_000, synthetic_n_test=10_000)
    if args.data_root:
        overrides["data_root"] = args.data_root
    seeds = None if args.seeds is None else [int(s) for s in args.seeds.split(",")]
    rules = None if args.rules is None else args.rules.split(",")
    data = profile_data(profile, device=args.device, **overrides)   # generated before timing
    work = Path(tempfile.mkdtemp(prefix="bench_grid_"))
    meta = {"package_version": __version__, "torch_version": torch.__version__,
            "python": platform.python_version(), "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(), "device": str(data.device),
            "device_name": (torch.cuda.get_device_name(data.device)
                            if data.device.type == "cuda" else None),
            "load_average_start": load_average(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "profile": profile.name, "overrides": overrides, "seeds": seeds, "rules": rules,
            "frozen": not args.no_frozen, "num_train": data.num_train}
    rows, first = [], None
    try:
        for s in settings:
            folder = work / s["label"].replace(":", "_")
            load0 = load_average()
            t0 = time.perf_counter()
            records = run_grid(profile, folder, rules=rules, seeds=seeds,
                               frozen=not args.no_frozen, data=data, executor=s["executor"],
                               workers=s["workers"], threads=s["threads"], progress=True,
                               **overrides)
            wall = time.perf_counter() - t0
            runs = _runs(records)
            # the runs' own training seconds, summed: the work the workers did side by side
            run_s = sum(e["seconds"] for r in records for e in r.result.trace)
            first = first or (wall, runs, run_s)
            rows.append({**s, "runs": len(records), "wall_s": wall, "ratio": wall / first[0],
                         "run_seconds": run_s,
                         "ceiling": first[2] / (run_s / s["workers"]),
                         "same_runs_as_first": _same(runs, first[1]),
                         "load_average_before": load0, "load_average_after": load_average()})
            print(f"[bench_grid] {s['label']}: {len(records)} runs in {wall:.1f} s "
                  f"({wall / first[0]:.2f}x the first)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta["load_average_end"] = load_average()
    print()
    print(f"grid: profile {profile.name} {overrides or ''}, {rows[0]['runs']} runs, "
          f"{data.num_train:,} training images, device {data.device}; {meta['cpu_count']} cores "
          f"({meta['cpu_model']}); load {meta['load_average_start']} -> "
          f"{meta['load_average_end']}")
    print(f"{'setting':<22} {'wall s':>8} {'speed-up':>9} {'run s':>8} {'ceiling':>8}  "
          f"same runs as first")
    for r in rows:
        print(f"{r['label']:<22} {r['wall_s']:>8.1f} {1 / r['ratio']:>8.2f}x "
              f"{r['run_seconds']:>8.1f} {r['ceiling']:>7.2f}x  {'yes' if r['same_runs_as_first'] else 'no'}")
    print("speed-up: the first setting's wall time over this one's. run s: the runs' own training\n"
          "seconds, summed. ceiling: the speed-up with no idle worker and no start-up (the first\n"
          "setting's run s over this one's per worker): below the worker count when a run on fewer\n"
          "threads, beside the others, is slower than one run on all of them alone.")
    out = {"metadata": meta, "settings": rows}
    if args.json:
        write_json_atomic(args.json, out)
    return out


if __name__ == "__main__":
    main()
