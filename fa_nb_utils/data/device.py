"""Training data held on the device: normalisation, permutation batches, whole-batch augmentation.

The train and test splits live as tensors on the training device; a batch is a slice of a random
permutation, augmented on the device as a whole: random crop 32 with padding 4 and a horizontal
flip, independent per image, padding with the normalised value of a raw-0 pixel. Sources:
CIFAR-10 and the synthetic set (`DeviceData.from_cifar`), or a user's own tensors
(`DeviceData.from_tensors`).
Not here: file formats (cifar.py), the synthetic generator (synthetic.py).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from .cifar import CIFAR_MEAN, CIFAR_STD, CifarArrays

PAD = 4  # random-crop padding in pixels (the paper's augmentation)
EVAL_BATCHES = 10  # the protocol's eval batches: the first 10 x 128 test images, unshuffled
EVAL_BATCH_SIZE = 128


def _as_tensor(a, name: str) -> torch.Tensor:
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(np.ascontiguousarray(a))
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(a).__name__}")
    return a


def _check_labels(y: torch.Tensor, n: int, num_classes: int | None, name: str) -> torch.Tensor:
    if y.dim() != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match its inputs, got {tuple(y.shape)}")
    if y.is_floating_point():
        if not torch.equal(y, y.round()):
            raise ValueError(f"{name} must hold integer class indices, got non-integer floats")
    y = y.long()
    if n and int(y.min()) < 0:
        raise ValueError(f"{name} has negative labels (min {int(y.min())}); labels must be 0..C-1")
    if num_classes is not None and n and int(y.max()) >= num_classes:
        raise ValueError(
            f"{name} has label {int(y.max())} but num_classes={num_classes}; labels must be in "
            f"0..{num_classes - 1} (pass num_classes= or remap the labels)")
    return y


def fingerprint_tensors(*tensors: torch.Tensor) -> str:
    """sha256 over the bytes of the given tensors (identifies user data in cache keys)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


@dataclass
class DeviceData:
    """A normalised train/test split resident on one device: float32 (N, 3, 32, 32) images or
    (N, D) vectors; `augment`: crop/flip on train batches (images only).
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: torch.Tensor  # per channel (images) or scalar; what was subtracted
    std: torch.Tensor
    augment: bool
    name: str
    fingerprint: str

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_cifar(cls, arrays: CifarArrays, device: torch.device | str = "cpu",
                   augment: bool = True, name: str = "cifar10",
                   limit_train: int | None = None) -> "DeviceData":
        """CIFAR-format uint8 arrays -> normalised float tensors with CIFAR-10's statistics."""
        mean = torch.tensor(CIFAR_MEAN, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(CIFAR_STD, dtype=torch.float32).view(3, 1, 1)
        train_x, train_y = arrays.train_x, arrays.train_y
        if limit_train is not None:
            train_x, train_y = train_x[:limit_train], train_y[:limit_train]

        def prep(a: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(np.ascontiguousarray(a)).to(device)
            return ((t.float() / 255.0) - mean.to(device)) / std.to(device)

        return cls(
            train_x=prep(train_x), train_y=torch.from_numpy(train_y).long().to(device),
            test_x=prep(arrays.test_x), test_y=torch.from_numpy(arrays.test_y).long().to(device),
            num_classes=len(arrays.label_names), mean=mean, std=std, augment=augment,
            name=name, fingerprint=arrays.fingerprint + (f":first{limit_train}" if limit_train else ""),
        )

    @classmethod
    def from_tensors(cls, train_x, train_y, test_x, test_y, *, num_classes: int | None = None,
                     device: torch.device | str = "cpu", augment: bool | None = None,
                     normalize: bool = True, name: str = "tensors") -> "DeviceData":
        """A user's own data: any input dim, any class count. Normalised with the train split's
        statistics (per channel for images, one scalar for (N, D) vectors, whose per-feature
        statistics would blow up near-constant pixels); `augment=None`: crop/flip exactly for
        (N, 3, 32, 32) images.
        """
        train_x, test_x = _as_tensor(train_x, "train_x"), _as_tensor(test_x, "test_x")
        train_y, test_y = _as_tensor(train_y, "train_y"), _as_tensor(test_y, "test_y")
        if train_x.dim() < 2 or train_x.shape[0] == 0:
            raise ValueError(f"train_x must have shape (N, ...) with N >= 1, got {tuple(train_x.shape)}")
        if test_x.shape[1:] != train_x.shape[1:]:
            raise ValueError(f"test_x has per-sample shape {tuple(test_x.shape[1:])} but train_x "
                             f"has {tuple(train_x.shape[1:])}; they must match")
        if test_x.shape[0] == 0:
            raise ValueError("test_x is empty: accuracy and the protocol need test samples")
        train_x, test_x = train_x.float(), test_x.float()
        for t, nm in ((train_x, "train_x"), (test_x, "test_x")):
            if not torch.isfinite(t).all():
                raise ValueError(f"{nm} contains NaN or inf values; clean the data first")
        if num_classes is None:
            num_classes = int(max(train_y.max(), test_y.max()).item()) + 1
        train_y = _check_labels(train_y, train_x.shape[0], num_classes, "train_y")
        test_y = _check_labels(test_y, test_x.shape[0], num_classes, "test_y")
        is_image = train_x.dim() == 4 and tuple(train_x.shape[1:]) == (3, 32, 32)
        if augment is None:
            augment = is_image
        if augment and not is_image:
            raise ValueError(
                f"crop/flip augmentation needs (N, 3, 32, 32) images, got per-sample shape "
                f"{tuple(train_x.shape[1:])}; pass augment=False")
        fp = fingerprint_tensors(train_x, train_y, test_x, test_y)
        if normalize:
            dims = (0, 2, 3) if train_x.dim() == 4 else tuple(range(train_x.dim()))
            mean = train_x.mean(dim=dims, keepdim=True)[0]
            std = train_x.std(dim=dims, keepdim=True)[0].clamp_min(1e-8)
        else:
            mean = torch.zeros(()); std = torch.ones(())
        norm = lambda t: ((t - mean) / std).to(device)
        return cls(norm(train_x), train_y.to(device), norm(test_x), test_y.to(device),
                   num_classes=num_classes, mean=mean, std=std, augment=bool(augment),
                   name=name, fingerprint=fp)

    def __post_init__(self):
        self._padded = None
        if self.augment:
            # Held padded once (a view of its centre is train_x), so a batch is two gathers.
            self._padded = pad_images(self.train_x, self.pad_fill())
            self.train_x = self._padded[:, :, PAD:-PAD, PAD:-PAD]

    # -- properties --------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.train_x.device

    @property
    def input_dim(self) -> int:
        return int(np.prod(self.train_x.shape[1:]))

    @property
    def num_train(self) -> int:
        return int(self.train_x.shape[0])

    def steps_per_epoch(self, batch_size: int) -> int:
        return -(-self.num_train // batch_size)

    # -- batches -----------------------------------------------------------------------------
    def train_batches(self, batch_size: int, order_gen: torch.Generator,
                      aug_gen: torch.Generator | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch: slices of a permutation drawn on the CPU (same order on every device)."""
        perm = torch.randperm(self.num_train, generator=order_gen).to(self.device)
        for i in range(0, self.num_train, batch_size):
            idx = perm[i:i + batch_size]
            if self.augment:
                # one gather of whole padded images, one gather of their crops (same draws as
                # augment_batch on the unpadded batch)
                h, w = self.train_x.shape[2:]
                rows, cols = _draw_crops(len(idx), h, w, aug_gen, self.device)
                x = _crop(self._padded[idx], rows, cols)
            else:
                x = self.train_x[idx]
            yield x, self.train_y[idx]

    def pad_fill(self) -> torch.Tensor:
        """The normalised value of a raw-0 pixel, per channel: what zero-padding becomes."""
        return (-self.mean / self.std).to(self.device).reshape(1, -1, 1, 1)

    def eval_batches(self, n: int = EVAL_BATCHES, batch_size: int = EVAL_BATCH_SIZE
                     ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The protocol's eval batches: the first n x batch_size test samples, unshuffled."""
        if self.test_x.shape[0] < n * batch_size:
            raise ValueError(
                f"the test split has {self.test_x.shape[0]} samples but the protocol's eval batches "
                f"need {n} x {batch_size} = {n * batch_size}; use a larger test split or fewer batches")
        return [(self.test_x[i * batch_size:(i + 1) * batch_size],
                 self.test_y[i * batch_size:(i + 1) * batch_size]) for i in range(n)]


def _draw_crops(b: int, h: int, w: int, gen: torch.Generator | None, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: a shift in 0..2*PAD on each axis and a flip; as row/col indices into the padded image."""
    dy = torch.randint(0, 2 * PAD + 1, (b,), generator=gen, device=device)
    dx = torch.randint(0, 2 * PAD + 1, (b,), generator=gen, device=device)
    flip = torch.rand(b, generator=gen, device=device) < 0.5
    rows = dy[:, None] + torch.arange(h, device=device)                     # (B, H)
    cols = dx[:, None] + torch.arange(w, device=device)                     # (B, W)
    return rows, torch.where(flip[:, None], cols.flip(1), cols)


def _crop(padded: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Gather each padded image's crop (B, C, H+2P, W+2P) -> (B, C, H, W) in one gather."""
    b, c, hp, wp = padded.shape
    h, w = rows.shape[1], cols.shape[1]
    offsets = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, hp * wp).gather(2, offsets).reshape(b, c, h, w)


def pad_images(x: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Pad (N, C, H, W) by PAD on each side with the per-channel value `fill` (1, C, 1, 1)."""
    return torch.nn.functional.pad(x - fill, (PAD, PAD, PAD, PAD)) + fill


def augment_batch(x: torch.Tensor, fill: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """Random crop (pad 4, independent shift per image) + independent horizontal flip, on device.

    x: (B, C, H, W) normalised images; fill: (1, C, 1, 1) value of the padding.
    """
    rows, cols = _draw_crops(x.shape[0], x.shape[2], x.shape[3], gen, x.device)
    return _crop(pad_images(x, fill), rows, cols)
