"""Shared pieces of the benchmark scripts: data, clocks, machine facts. Not a benchmark itself."""
from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Callable

import torch

from fa_nb_utils.data import cifar, synthetic


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
