"""fa-eval: companion code for evaluating Feedback Alignment learning rules.

Modules: `model` (the pre-LN residual MLP), `rules` (BP, DFA, FA and their registry), `data` and
`cifar` (device-resident data, CIFAR-10's on-disk format), `synthetic` (offline data in that
format), `train` and `checkpoint` (the trainer, resumable runs), `measures`, `diagnose`, `report`,
`alignment`, `monitor`, `partial_audit` (the protocol), and for the notebooks `profiles`,
`experiments`, `audit`, `early_stop`, `penalty`, `pitfalls`, `figures`, `paper`, `reproduce`.
"""
__version__ = "0.1.0"

from .model import ResidualMLP  # noqa: E402
from .rules import RULES, Rule, build_rule, register_rule  # noqa: E402
from .train import TrainConfig, train  # noqa: E402
from .diagnose import diagnose  # noqa: E402
from .report import DiagnosticReport, DiagnosticThresholds  # noqa: E402
from .monitor import Monitor, replay_file, replay_trace  # noqa: E402

__all__ = ["ResidualMLP", "RULES", "Rule", "build_rule", "register_rule", "TrainConfig", "train",
           "diagnose", "DiagnosticReport", "DiagnosticThresholds", "Monitor", "replay_file",
           "replay_trace", "__version__"]
