"""Reproduction profiles: the paper's recipe on CIFAR-10, and a smoke profile that runs offline.

`get_profile("paper")` / `get_profile("smoke")` give a `Profile`; the notebooks receive its name
as a papermill parameter and read every size from here, so a profile is defined once.
Not here: running the notebooks (reproduce.py), training (train.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .train import TrainConfig


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
    description: str = ""

    def config(self, rule: str, seed: int, **overrides) -> TrainConfig:
        """The main-audit TrainConfig of `rule` and `seed` under this profile."""
        base = dict(rule=rule, seed=seed, epochs=self.epochs, data=self.data,
                    synthetic_n_train=self.synthetic_n_train,
                    synthetic_n_test=self.synthetic_n_test, d_hidden=self.d_hidden,
                    num_blocks=self.num_blocks, cosine_epochs=self.cosine_epochs)
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
    name="smoke", data="synthetic", seeds=(42, 123), epochs=30, penalty_epochs=6,
    d_hidden=256, synthetic_n_train=10_000, synthetic_n_test=2_000,
    cosine_epochs=500, penalty_cosine_epochs=None, monitor_epochs=30,
    worked_example={"d_hidden": 128, "epochs": 5, "rule_options": {"credit_norm": "rms"}},
    description="Everything offline on the generated synthetic data at the paper's width "
                "(d=256, L=4): 2,370-step main runs on the paper's per-step schedule, 474-step "
                "penalty runs, 2 seeds; under 10 minutes on a 2-core CPU. See SMOKE_MEASUREMENTS.",
)
SMOKE_MEASUREMENTS = """How the smoke sizes were chosen. `benchmarks/measure_dfa_firing.py`: DFA on the synthetic
standard set, L=4, seed 42, on the paper's per-step schedule (cosine over as many steps as 100
CIFAR-10 epochs, ~39,100), run for 5,600 steps; then BP and its frozen-blocks baseline for 4
epochs (2-core CPU, 2026-11-22):

  train set  d     (a) fires at    (b) fires at    BP vs frozen-blocks BP, 4 epochs
  5,000      64    never           never           0.446 vs 0.424 (+2.1 pp)
  5,000      128   never           never           0.480 vs 0.437 (+4.3 pp)
  5,000      256   3,480 steps     never           0.523 vs 0.447 (+7.7 pp)
  10,000     256   ~1,850 steps    ~5,000 steps    (tests/test_synthetic.py: 0.628 vs 0.567
                                                    after 5 epochs)

Width matters (at d <= 128 DFA's stream does not explode within 5,600 steps) and so does the
training-set size (5,000 images explode later than 10,000), so the smoke profile keeps d=256 and
10,000 images and trains each main run for 30 epochs = 2,370 steps, past the step at which (a)
fires, on the paper's per-step schedule (cosine_epochs=500). (b) needs ~5,000 steps, more than a
10-minute budget allows for 12 main runs: in the smoke tables DFA is walked back by (a) (and by (d)
where its accuracy falls under its frozen baseline); the slow test tests/test_synthetic.py shows
(b) firing at 70 epochs. Penalty runs: 6 epochs (474 steps) with their own cosine, every lambda,
2 seeds. Cost: ~11 ms per DFA/BP step at d=256 on 2 cores (benchmarks/bench_train.py).
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
