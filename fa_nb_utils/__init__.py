"""fa-eval: companion code for evaluating Feedback Alignment learning rules.

The core a user imports sits at the top level:

- `model` (the pre-LN residual MLP), `rules` (BP, DFA, FA and the registry), `ep` (equilibrium
  propagation), `bridges` (State Bridge, Credit Bridge), `config`, `trainer`, `runs` and
  `checkpoint` (the fast, resumable trainer: TrainConfig, the loop, the run store, the file format);
- the protocol: `measures` (per-layer numbers), `diagnostics` (the table of diagnostics),
  `protocol` (`diagnose`), `report`, `alignment` (Γ), `monitor` (in training, and replay),
  `partial_audit` (logs without per-layer numbers), `separation` (which thresholds separate runs
  known healthy from runs known failing), `hooks` (the protocol on a model without
  `return_hidden`, through forward hooks on named modules);
- `validation`, `io`, `seeding`, `text`: shared helpers; `cli`: every command line.

`data/` reads and writes CIFAR-10's format and holds data sets on the device; `paper/` is the
paper's reproduction (profiles, the training grid, the notebooks' logic, figures, the paper's
numbers, the papermill runner). `docs/` explains the protocol, the rules and how to report.
"""
from .version import __version__  # noqa: E402,F401

from .model import ResidualMLP  # noqa: E402
from .rules import RULES, Rule, build_rule, register_rule  # noqa: E402
from . import ep  # noqa: E402,F401  (registers the EP rule)
from . import bridges  # noqa: E402,F401  (registers state_bridge and credit_bridge)
from .config import TrainConfig  # noqa: E402
from .trainer import train  # noqa: E402
from .protocol import diagnose  # noqa: E402
from .report import DiagnosticReport, DiagnosticThresholds  # noqa: E402
from .diagnostics import DIAGNOSTICS, Diagnostic, register_diagnostic  # noqa: E402
from .monitor import Monitor, replay_file, replay_trace  # noqa: E402
from .alignment import gamma, standard_verdict  # noqa: E402
from .partial_audit import partial_audit  # noqa: E402
from .separation import threshold_separation  # noqa: E402
from .data import DeviceData  # noqa: E402

__all__ = ["ResidualMLP", "RULES", "Rule", "build_rule", "register_rule", "TrainConfig", "train",
           "diagnose", "DiagnosticReport", "DiagnosticThresholds", "DIAGNOSTICS", "Diagnostic",
           "register_diagnostic", "Monitor", "replay_file", "replay_trace", "gamma",
           "standard_verdict", "partial_audit", "threshold_separation", "DeviceData",
           "__version__"]
