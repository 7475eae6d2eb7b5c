"""Reproduction profiles: the paper's recipe on CIFAR-10, and a smoke profile that runs offline.

`get_profile("paper")` / `get_profile("smoke")` give a `Profile`; the notebooks receive its name
as a papermill parameter and read every size from here, so a profile is defined once.
Not here: running the notebooks (reproduce.py), training (train.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..trainer import TrainConfig


@dataclass(frozen=True)
class Profile:
    """Every size the notebooks use. `config(...)` turns it into a TrainConfig."""

    name: str
    data: str                        # "cifar10" | "synthetic"
    seeds: tuple[int, ...]
    epochs: int                      # main audit (notebook 01)
    penalty_epochs: int              # penalty runs (notebook 04)
    d_hidden: int = 256
    num_blocks: int = 4
    synthetic_n_train: int = 10_000
    synthetic_n_test: int = 2_000
    cosine_epochs: int | None = None     # cosine horizon of the main runs (None: = epochs)
    penalty_cosine_epochs: int | None = None
    lambdas: tuple[float, ...] = (0.0, 1e-4, 1e-2, 1e-1)
    penalty_lambda: float = 1e-2     # the one every rule gets in notebook 04
    monitor_epochs: int = 100        # the live monitored run of notebook 03 (stops early)
    worked_example: dict = field(default_factory=lambda: {
        "d_hidden": 128, "epochs": 5, "rule_options": {"credit_norm": "rms"}})
    lr: float = 1e-3
    description: str = ""

    def config(self, rule: str, seed: int, **overrides) -> TrainConfig:
        """The main-audit TrainConfig of `rule` and `seed` under this profile."""
        base = dict(rule=rule, seed=seed, epochs=self.epochs, data=self.data,
                    synthetic_n_train=self.synthetic_n_train,
                    synthetic_n_test=self.synthetic_n_test, d_hidden=self.d_hidden,
                    num_blocks=self.num_blocks, cosine_epochs=self.cosine_epochs, lr=self.lr)
        base.update(overrides)
        return TrainConfig(**base)

    def penalty_config(self, rule: str, seed: int, penalty_lambda: float, **overrides
                       ) -> TrainConfig:
        return self.config(rule, seed, epochs=self.penalty_epochs,
                           cosine_epochs=self.penalty_cosine_epochs,
                           penalty_lambda=penalty_lambda, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PAPER = Profile(
    name="paper", data="cifar10", seeds=(42, 123, 456), epochs=100, penalty_epochs=30,
    description="The paper's recipe (SPEC §3) on CIFAR-10: d=256, L=4, AdamW lr 1e-3, "
                "weight decay 0.01, cosine schedule, batch 128, 100 epochs (30 for the penalty "
                "runs), seeds 42, 123, 456. About an hour per rule and seed on a 2-core CPU; "
                "use a GPU.",
)

SMOKE = Profile(
    name="smoke", data="synthetic", seeds=(42, 123), epochs=15, penalty_epochs=3,
    d_hidden=256, synthetic_n_train=10_000, synthetic_n_test=2_000, lr=2e-3,
    cosine_epochs=500, penalty_cosine_epochs=None, monitor_epochs=15,
    worked_example={"d_hidden": 128, "epochs": 5, "rule_options": {"credit_norm": "rms"}},
    description="Everything offline on the generated synthetic data at the paper's width "
                "(d=256, L=4), 2 seeds: 1,185-step main runs at lr 2e-3 on the paper's per-step "
                "schedule, 237-step penalty runs; about 9 minutes on a 2-core CPU. "
                "See profiles.SMOKE_MEASUREMENTS for why.",
)
SMOKE_MEASUREMENTS = """How the smoke sizes were chosen (2-core CPU, 2026-11-22; DFA, L=4, synthetic standard set,
the paper's per-step cosine schedule: cosine over as many steps as 100 CIFAR-10 epochs).

benchmarks/measure_dfa_firing.py, 5,000 training images, seed 42, lr 1e-3, 5,600 steps; then BP
and its frozen-blocks baseline for 4 epochs:
  d=64:  (a) never, (b) never;        BP 0.446 vs frozen 0.424 (+2.1 pp)
  d=128: (a) never, (b) never;        BP 0.480 vs frozen 0.437 (+4.3 pp)
  d=256: (a) at 3,480 steps, (b) never; BP 0.523 vs frozen 0.447 (+7.7 pp)
10,000 training images, d=256, seed 42: lr 1e-3: (a) at 1,817 steps (epoch 23), (b) at ~5,000
(epoch 64; tests/test_synthetic.py); lr 2e-3: (a) at 948 steps (epoch 12), (b) past 1,580;
seed 123 at lr 2e-3: max growth 29 at epoch 20, (a) not yet. 20,000 images explode later in
steps than 10,000 (growth 35 at 1,884 steps).

So: the explosion needs the paper's width (d <= 128 never fires) and enough data; its onset is
set by Adam's step size (the weights grow by about lr per step), so the smoke profile keeps d=256
and 10,000 images and doubles the lr to 2e-3 to bring DFA's (a) inside a 10-minute budget for
12 main runs of 15 epochs (1,185 steps) each; a step costs ~13 ms at d=256 on 2 cores. On smoke,
DFA seed 42 fires (a) at epoch 12 and seed 123 does not yet: the tables read "walked back 1/2"
by (a), plus (d) where DFA's accuracy falls under its frozen baseline. (b) needs more steps than
the budget allows; tests/test_synthetic.py shows it firing at the paper's lr. Penalty runs: 3
epochs (237 steps), their own cosine, every lambda, 2 seeds. A full smoke reproduction took 589 s
at 16 + 4 epochs (01: 309 s, 04: 187 s), hence 15 + 3.
"""


# For tests and notebook development only: every notebook runs in seconds; the numbers mean nothing.
TINY = Profile(
    name="tiny", data="synthetic", seeds=(42, 123), epochs=2, penalty_epochs=1, d_hidden=32,
    synthetic_n_train=1_000, synthetic_n_test=1_280, monitor_epochs=2,
    worked_example={"d_hidden": 32, "epochs": 1, "rule_options": {"credit_norm": "rms"}},
    description="Seconds per notebook, for tests and development; its numbers mean nothing.",
)

PROFILES = {"paper": PAPER, "smoke": SMOKE, "tiny": TINY}


def get_profile(name: str) -> Profile:
    if not isinstance(name, str) or name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of: {', '.join(PROFILES)} "
                         "('paper' needs CIFAR-10; 'smoke' runs offline on synthetic data)")
    return PROFILES[name]
