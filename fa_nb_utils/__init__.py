"""fa-eval: companion code for evaluating Feedback Alignment learning rules.

Modules: `model` (the pre-LN residual MLP), `rules` (BP, DFA, ... and their registry), `data` and
`cifar` (device-resident data, CIFAR-10's on-disk format), `synthetic` (offline data in that
format), `train` (the trainer), `measures` (the protocol's per-layer numbers).
"""
__version__ = "0.1.0"

from .model import ResidualMLP  # noqa: E402
from .rules import RULES, Rule, build_rule, register_rule  # noqa: E402
from .train import TrainConfig, train  # noqa: E402

__all__ = ["ResidualMLP", "RULES", "Rule", "build_rule", "register_rule", "TrainConfig", "train",
           "__version__"]
