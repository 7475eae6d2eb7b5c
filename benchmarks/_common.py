"""Shared pieces of the benchmark scripts: data, clocks, machine facts, the timing scripts'
command line and output. Not a benchmark itself."""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from fa_nb_utils import TrainConfig, __version__
from fa_nb_utils.data import DeviceData, cifar, synthetic
from fa_nb_utils.io import write_json_atomic
from fa_nb_utils.model import ResidualMLP
from fa_nb_utils.rules import build_rule
from fa_nb_utils.trainer import make_optimizer, train_step


def load_arrays(data_root: str | None, n_train: int, n_test: int) -> tuple[cifar.CifarArrays, str]:
    """Real CIFAR-10 if it is on disk (never downloaded), else the synthetic set in its format."""
    root = Path(data_root).expanduser() if data_root else cifar.default_data_root()
    try:
        return cifar.load_cifar10(root, download=False), "cifar10"
    except cifar.DataNotFoundError:
        folder = synthetic.ensure_synthetic(root, "standard", n_train=n_train, n_test=n_test)
        return cifar.read_cifar10_folder(folder), "synthetic"


def sync(device) -> None:
    """Wait for queued CUDA work, so that a clock read means what it says."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def load_average() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


def with_threads(threads: int | None, fn: Callable[[], dict]) -> dict:
    """Run `fn` with torch using `threads` threads (None: unchanged), restoring the count after."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def step_ms(data, cases, *, rounds: int, n: int = 8, warmup: int = 2) -> list[list[float]]:
    """ms per training step at batch 128 of each (rule, options[, make]) case, on a d=256, L=4
    ResidualMLP each (warmed up), in interleaved rounds so that load drift hits every case alike:
    per case, the ms of each round. `make(model)`, when given, builds the rule instead of
    `build_rule`."""
    x, y = data.test_x[:128], data.test_y[:128]
    built = []
    for name, opts, *make in cases:
        cfg = TrainConfig(rule=name, rule_options=opts, data="synthetic", progress=False)
        model = ResidualMLP(data.input_dim, 256, data.num_classes, 4, seed=0)
        rule = (make[0](model) if make
                else build_rule(name, model, opts, torch.Generator().manual_seed(0)))
        opt = make_optimizer(model, rule, cfg)
        for _ in range(warmup):
            train_step(model, rule, opt, x, y, cfg)
        built.append((model, rule, opt, cfg))
    times = [[] for _ in built]
    for _ in range(rounds):
        for case, out in zip(built, times):
            t0 = time.perf_counter()
            for _ in range(n):
                train_step(*case[:3], x, y, case[3])
            out.append((time.perf_counter() - t0) / n * 1e3)
    return times


def add_common_args(p: argparse.ArgumentParser, shape: dict, quick: dict) -> None:
    """The options bench_train.py and bench_protocol.py share: warm-up, sizes (defaults: `shape`,
    the recipe's), threads, device, seed, data, output, and --quick (the `quick` sizes)."""
    p.add_argument("--warmup", type=int, default=10,
                   help="untimed steps per case first (default %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: current)")
    p.add_argument("--d", type=int, default=shape["d"],
                   help="stream width d (default %(default)s)")
    p.add_argument("--blocks", type=int, default=shape["blocks"],
                   help="blocks L (default %(default)s)")
    p.add_argument("--batch", type=int, default=shape["batch"],
                   help="batch size (default %(default)s)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--seed", type=int, default=42, help="the runs' seed (default %(default)s)")
    p.add_argument("--data-root", default=None,
                   help="CIFAR-10 if there, else where the synthetic set is written "
                        "(default: $FA_EVAL_DATA, else <project>/data)")
    p.add_argument("--n-train", type=int, default=10_000,
                   help="synthetic train images when CIFAR-10 is absent (default %(default)s)")
    p.add_argument("--n-test", type=int, default=2_000,
                   help="synthetic test images, >= 1280 (default %(default)s)")
    p.add_argument("--json", default=None, metavar="PATH", help="write every number here")
    p.add_argument("--quiet", action="store_true", help="print nothing (main() still returns it)")
    p.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test: " + ", ".join(
        f"{k.replace('_', '-')} {v}" for k, v in quick.items()))


def parse_common(p: argparse.ArgumentParser, argv: list[str] | None, quick: dict,
                 positive: tuple[str, ...]) -> argparse.Namespace:
    """Parse `argv`: --quick sets the `quick` sizes the command line does not give; each option
    in `positive` must be >= 1, --warmup and --blocks >= 0, --threads >= 1."""
    args = p.parse_args(argv)
    if args.quick:
        given = {a[2:].split("=", 1)[0].replace("-", "_")
                 for a in (argv if argv is not None else sys.argv[1:]) if a.startswith("--")}
        for k, v in quick.items():
            if k not in given:
                setattr(args, k, v)
    for name in positive:
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.blocks < 0 or (args.threads is not None and args.threads < 1):
        p.error("--warmup and --blocks must be >= 0, --threads >= 1")
    return args


def setup(args: argparse.Namespace, device):
    """(load average at start, arrays, data source name, DeviceData on `device`)."""
    load_start = load_average()
    arrays, source = load_arrays(args.data_root, args.n_train, args.n_test)
    data = DeviceData.from_cifar(arrays, device=device, augment=True, name=source)
    return load_start, arrays, source, data


def metadata(device, load_start) -> dict:
    """Versions, device, threads and the machine's load: what every result records."""
    return {"package_version": __version__, "torch_version": torch.__version__,
            "python": platform.python_version(), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "threads": torch.get_num_threads(), "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(), "load_average_start": load_start,
            "load_average_end": load_average(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def print_header(title: str, meta: dict) -> None:
    print(f"fa-eval {meta['package_version']} {title} | torch {meta['torch_version']} | "
          f"{meta['device']} | {meta['threads']} threads | CPU: {meta['cpu_model']} "
          f"({meta['cpu_count']} logical cores)")
    if meta["load_average_start"] is not None:
        print(f"load average (1/5/15 min) at start: {meta['load_average_start']}, at end: "
              f"{meta['load_average_end']}  (well above 0 means other jobs share the cores: "
              "absolute times are noisy; final numbers must come from a quiet machine)")


def finish(res: dict, args: argparse.Namespace, print_report: Callable[[dict], None]) -> dict:
    """Print `res` (unless --quiet) and write it to --json; returns it."""
    if not args.quiet:
        print_report(res)
    if args.json:
        write_json_atomic(Path(args.json), res)
        if not args.quiet:
            print(f"\nnumbers written to {args.json}")
    return res
