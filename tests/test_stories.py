"""Notebooks 03-05's logic (early_stop.py, penalty.py, pitfalls.py) on tiny runs in tmp folders.

Properties a reader relies on: the early-stop table is the replay's numbers (the saved share
computed, never a constant); the monitored run stops with a named reason and its trace ends there;
the penalty table covers the whole plan with each rule's own frozen baseline; the partial audit
never passes (a); each pitfall's effect, measured independently (float64 autograd, credits
and cosines written out), matches what its function reports; the figure and table files appear; the
three notebooks are well-formed (no outputs, one `parameters` cell).
"""
import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fa_nb_utils.paper import early_stop as es
from fa_nb_utils.paper import published
from fa_nb_utils.paper import penalty as pen
from fa_nb_utils.paper import pitfalls as pf
from fa_nb_utils.alignment import GammaUnavailable, gamma
from fa_nb_utils.paper.experiments import run_grid
from fa_nb_utils.monitor import Monitor, StopReason, replay_trace
from fa_nb_utils.paper.profiles import get_profile
from fa_nb_utils.report import DiagnosticThresholds
from fa_nb_utils.rules import RULES, build_rule
from fa_nb_utils.seeding import make_generator
from fa_nb_utils.config import load_data
from fa_nb_utils.trainer import train

TINY = get_profile("tiny")


@pytest.fixture(scope="module")
def tiny_data(data_root):
    return load_data(TINY.config("bp", TINY.seeds[0], data_root=str(data_root)),
                     torch.device("cpu"))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="module")
def grid(tiny_data, results):
    return run_grid(TINY, results, rules=["bp", "dfa"], frozen=False, data=tiny_data)


@pytest.fixture(scope="module")
def dfa_run(grid):
    return next(r for r in grid if r.rule == "dfa" and r.seed == 42)


@pytest.fixture(scope="module")
def study(tiny_data, results):
    runs = pen.run_penalty_study(TINY, results, seeds=[42], data=tiny_data)
    frozen = pen.frozen_baselines(runs)
    return runs, frozen, pen.audit_runs(runs, frozen)


def g_L(trace):
    return [e["bp_grad_norms"][-1] for e in trace]


def floor_between_epochs_0_and_1(trace):
    """A (b) floor that the deepest gradient crosses between epoch 0 and epoch 1 of `trace`."""
    g = g_L(trace)
    assert g[1] < g[0], "tiny DFA's ||g_L|| should shrink in its first epoch"
    return math.sqrt(g[0] * g[1])


# ---------------------------------------------------------------------------------------------
# 03: early stop
# ---------------------------------------------------------------------------------------------
def test_early_stop_rows_are_the_replay_and_the_saved_share_is_computed(grid, dfa_run):
    floor = floor_between_epochs_0_and_1(dfa_run.result.trace)
    t = DiagnosticThresholds(g_norm_floor=floor)
    rows = es.early_stop_table(grid, thresholds=t)
    assert len(rows) == len(grid) * len(es.DEFAULT_KEYS)
    for run in grid:
        replay = replay_trace(run.result.trace, thresholds=t)
        for key in es.DEFAULT_KEYS:
            (row,) = [r for r in rows if (r["rule"], r["seed"], r["key"]) == (run.rule, run.seed, key)]
            ref = replay.row(key)
            assert (row["status"], row["first_epoch"], row["acc_then"], row["saved_share"],
                    row["diff_pp"]) == (ref.status, ref.first_epoch, ref.acc_then,
                                        ref.saved_share, ref.diff_pp)
            assert row["epochs"] == replay.last_epoch == run.result.trace[-1]["epoch"]
            assert row["acc_end"] == run.result.trace[-1]["acc_eval"]
    # independently: (b) fires where ||g_L|| first goes under the floor; saved = (E - e) / E
    (b,) = [r for r in rows if (r["rule"], r["seed"], r["key"]) == ("dfa", 42, "b")]
    g = g_L(dfa_run.result.trace)
    e = next(i for i, v in enumerate(g) if v < floor)
    E = len(g) - 1
    assert (b["status"], b["first_epoch"]) == ("fired", e) and e == 1
    assert b["saved_share"] == pytest.approx((E - e) / E)
    assert b["acc_then"] == dfa_run.result.trace[e]["acc_eval"]
    # another threshold gives another share: nothing is a constant
    stricter = es.early_stop_table(grid, thresholds=DiagnosticThresholds(g_norm_floor=1.0))
    (b0,) = [r for r in stricter if (r["rule"], r["seed"], r["key"]) == ("dfa", 42, "b")]
    assert (b0["first_epoch"], b0["saved_share"]) == (0, 1.0)


def test_early_stop_summary_and_the_papers_column(grid):
    rows = es.early_stop_table(grid, thresholds=DiagnosticThresholds(g_norm_floor=1.0))
    summary = {(s["rule"], s["key"]): s for s in es.early_stop_summary(rows)}
    n = len(TINY.seeds)
    assert summary[("dfa", "b")]["fired_on"] == f"{n}/{n} seeds"
    assert summary[("dfa", "b")]["saved_share_mean"] == pytest.approx(1.0)
    lo, hi = published.EARLY_STOP["dfa"]["b_epoch"]
    assert summary[("dfa", "b")][es.PAPER_COLUMN].startswith(f"epoch {lo}–{hi} of 100")
    assert summary[("bp", "a")][es.PAPER_COLUMN] == "never fires"
    assert es.paper_early_stop("fa", "a") is None            # the paper reports none: no cell


def test_live_monitored_run_stops_with_a_named_reason_and_its_trace_ends_there(
        grid, dfa_run, tiny_data, results):
    floor = floor_between_epochs_0_and_1(dfa_run.result.trace)
    monitor = Monitor(thresholds=DiagnosticThresholds(g_norm_floor=floor))
    live = es.live_monitored_run(TINY, results, monitor=monitor, data=tiny_data)
    stop = live.stop_reason
    assert isinstance(stop, StopReason) and stop.diagnostic == "b" and stop.epoch == 1
    assert live.trace[-1]["epoch"] == stop.epoch and live.trace[-1]["stop_reason"] == stop.to_dict()
    assert live.run_dir.parent == Path(results) / es.MONITORED_RUNS
    info = es.describe_live_run(live)
    assert info["stopped"] and info["message"] == stop.message
    assert info["saved_share"] == pytest.approx((TINY.monitor_epochs - 1) / TINY.monitor_epochs)
    # the replay of the unmonitored run with the same config predicts the same stop
    assert es.live_vs_replay(live, grid) == {"rule": "dfa", "seed": 42, "replay_stop_epoch": 1,
                                             "live_stop_epoch": 1, "agree": True}


def test_early_stop_files_appear_with_stamped_sidecars(grid, tmp_path):
    rows = es.early_stop_table(grid)
    paths = es.save_early_stop_table(rows, TINY, tmp_path)
    fig, fpaths = es.save_timeline(grid, TINY, tmp_path)
    for name, p in [("tables/03_early_stop", paths), ("figures/03_timeline", fpaths)]:
        for ext, path in p.items():
            assert path == tmp_path / f"{name}.{ext}" and path.stat().st_size > 0
    side = json.loads((tmp_path / "figures/03_timeline.json").read_text())
    assert side["metadata"]["profile"] == "tiny" and side["metadata"]["stamp"] == "synthetic data"
    dfa = side["numbers"]["dfa"]
    assert dfa["seed"] == 42 and dfa["g_L"] == g_L(next(
        r for r in grid if r.rule == "dfa" and r.seed == 42).result.trace)
    table = json.loads(paths["json"].read_text())
    assert "synthetic data" in table["caption"] and len(table["rows"]) == len(rows)


# ---------------------------------------------------------------------------------------------
# 04: penalty
# ---------------------------------------------------------------------------------------------
def test_penalty_table_covers_the_plan_with_each_rules_frozen_baseline(study):
    runs, frozen, audits = study
    rows = pen.penalty_table(audits, TINY)
    by_rule = {}
    for r in rows:
        by_rule.setdefault(r["rule"], []).append(r["lambda"])
    assert by_rule["dfa"] == list(TINY.lambdas)
    assert by_rule["bp"] == [0.0, TINY.penalty_lambda]
    others = [r for r in RULES if r not in ("bp", "dfa")]
    assert others, "expected at least one other registered rule"
    for rule in others:
        assert by_rule[rule] == [TINY.penalty_lambda]
    # (d) uses the rule's own frozen baseline, trained at the same budget with frozen blocks
    for run in runs:
        if run.frozen:
            assert run.config.freeze_blocks and run.penalty_lambda == 0.0
            assert run.config.epochs == TINY.penalty_epochs
    assert set(frozen) == {"bp", "dfa", *others}
    for a in audits:
        assert a["report"].frozen_baseline_acc == frozen[a["rule"]]["mean"]
    # the numbers are the runs' numbers
    dfa1 = next(r for r in rows if r["rule"] == "dfa" and r["lambda"] == TINY.penalty_lambda)
    run = next(r for r in runs if r.rule == "dfa" and not r.frozen
               and r.penalty_lambda == TINY.penalty_lambda)
    assert dfa1["acc_mean"] == run.result.trace[-1]["acc_eval"]
    assert f"{published.DFA_LAMBDA_SWEEP[1e-2]:.3f} (λ sweep)" in dfa1[pen.PAPER_ACC_COLUMN]
    assert dfa1[pen.PAPER_HL_COLUMN] == f"{published.PENALTY_H_L[1e-2]:.1e}"
    assert next(r for r in rows if r["rule"] == "bp" and r["lambda"] == 0.0)[
        pen.PAPER_ACC_COLUMN].startswith(f"{published.PENALTY['bp'][0]:.3f}")


def test_fired_column_uses_the_papers_form():
    assert pen.fired_text({"a": 3, "b": 3, "c": 1, "d": 3}, 3) == published.MAIN_TABLE["dfa"]["fired"]
    assert pen.fired_text({"a": 0, "b": 0, "c": 0, "d": None}, 2) == "(d) skipped"
    assert pen.fired_text({"a": 0, "b": 0, "c": 0, "d": 0}, 2) == "none"


def test_partial_audit_never_passes_a_and_reads_the_traces(study):
    runs, frozen, audits = study
    partial = pen.partial_audit_from_traces(runs, TINY.penalty_lambda, frozen["dfa"]["mean"])
    assert partial.status["a"] in ("fires", "undetermined")
    assert partial.status["b"] == partial.status["c"] == "not measured"
    assert "trustworthy" not in partial.verdict
    run = next(r for r in runs if r.rule == "dfa" and not r.frozen
               and r.penalty_lambda == TINY.penalty_lambda)
    (s,) = partial.seeds
    L = TINY.num_blocks
    assert s.h_L == run.result.trace[-1]["residual_norms"][-1]
    assert s.g_k == run.result.trace[-1]["bp_grad_norms"][L // 2]
    # (a) is bounded with the run's own final ||h_0||, the same trace entry as its ||h_L||
    assert s.h_0 == run.result.trace[-1]["residual_norms"][0] and partial.h0_norm is None
    assert "last trace entry" in partial.h0_source and partial.grad_layer == L // 2
    comparison = pen.compare_partial_full(partial, audits, TINY.penalty_lambda)
    assert [c["partial"] for c in comparison[:4]] == [partial.status[k] for k in "abcd"]
    assert comparison[-1]["partial"] == partial.verdict
    assert "cannot decide" in comparison[1]["comparison"]        # (b) is never measured


def test_penalty_files_appear(study, tmp_path):
    runs, frozen, audits = study
    rows = pen.penalty_table(audits, TINY)
    tpaths = pen.save_penalty_table(rows, TINY, tmp_path, frozen)
    fig, fpaths = pen.save_penalty_sweep(audits, TINY, tmp_path, frozen)
    for name, p in [("tables/04_penalty_audit", tpaths), ("figures/04_penalty_sweep", fpaths)]:
        for ext, path in p.items():
            assert path == tmp_path / f"{name}.{ext}" and path.stat().st_size > 0
    side = json.loads(fpaths["json"].read_text())
    assert side["numbers"]["rules"]["dfa"]["lambda"] == list(TINY.lambdas)
    assert "paper_dfa_acc" not in side["numbers"]     # the paper's CIFAR sweep is not drawn on synthetic data
    assert side["metadata"]["stamp"] == "synthetic data"


# ---------------------------------------------------------------------------------------------
# 05: pitfalls. Each test measures the pitfall's effect with its own computation (float64 autograd
# on a copy of the model, DFA's credits written out, cosines and norms by hand) and checks the
# function's numbers against it: never only the flag the function set itself.
# ---------------------------------------------------------------------------------------------
ALIGNED_EPOCHS = 60   # a tiny DFA run long enough for layer 0 to align with its feedback (~3 s)


@pytest.fixture(scope="module")
def aligned_dfa(tiny_data):
    """Measured: Γ per layer with the saved feedback +0.33, +0.32, -0.08, -0.10, -0.06."""
    return train(TINY.config("dfa", 42, epochs=ALIGNED_EPOCHS, device="cpu", progress=False),
                 data=tiny_data)


def _batches(result):
    cfg = result.config
    return result.data.eval_batches(cfg.eval_batches, cfg.eval_batch_size)


def bp_grads64(model, batches):
    """(x, y, [g_0..g_L]): per-sample dCE/dh_k by autograd through a float64 copy of the model."""
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    m = copy.deepcopy(model).double().eval()
    logits, hs = m(x.double(), return_hidden=True)
    grads = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), hs)
    return x, y, [g.detach().reshape(len(g), -1) for g in grads]


def dfa_credits64(model, feedback, x, y):
    """DFA's credits written out: e = softmax - onehot, a_0 = a_1 = e B_0^T, a_(l+1) = e B_l^T."""
    m = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        e = torch.softmax(m(x.double()), -1) - F.one_hot(y, 10).double()
    B = feedback.double()
    pairing = [0] + list(range(B.shape[0]))
    return [e @ B[k].T for k in pairing]


def cosine64(a, g):
    """Per-sample <a, g> / (|a| |g|) in float64 (samples where either is 0 dropped)."""
    a, g = a.double().reshape(len(a), -1), g.double().reshape(len(g), -1)
    na, ng = torch.sqrt((a ** 2).sum(1)), torch.sqrt((g ** 2).sum(1))
    keep = (na > 0) & (ng > 0)
    return ((a * g).sum(1)[keep] / (na[keep] * ng[keep])).numpy()


def gamma_by_hand(model, feedback, batches):
    x, y, grads = bp_grads64(model, batches)
    cos = [cosine64(a, g) for a, g in zip(dfa_credits64(model, feedback, x, y), grads)]
    return cos, [float(c.mean()) for c in cos]


def test_pitfall_1_norm_minus_one_is_not_the_per_sample_norm(dfa_run):
    h = pf.hidden_state(dfa_run.result.model, _batches(dfa_run.result))
    res = pf.pitfall_norm(h)
    per_sample = torch.sqrt((h.double() ** 2).sum(-1))        # the L2 norm over the last dim
    p_minus_1 = float(1.0 / (1.0 / h.double().abs()).sum())   # torch's p = -1 "norm", by hand
    wrong = h.norm(-1)  # pitfall-ok: the bug, to measure it
    # the effect: one tiny number where one norm per sample was wanted
    assert wrong.numel() == 1 and per_sample.shape == (h.shape[0],)
    assert float(wrong) == pytest.approx(p_minus_1, rel=1e-4)
    assert float(wrong) < 1e-3 * float(per_sample.min())
    # the function reports those numbers
    assert res.numbers["norm(-1)"] == pytest.approx(p_minus_1, rel=1e-4)
    assert res.numbers["norm(dim=-1) median"] == pytest.approx(float(per_sample.median()),
                                                               rel=1e-5)
    assert res.numbers["norm(dim=-1) min"] == pytest.approx(float(per_sample.min()), rel=1e-5)
    assert res.holds


def test_check_norm_usage_flags_norm_minus_one_only():
    src = ("a = h.norm(-1)\n"
           "b = h.norm(dim=-1)\n"
           "c = h.norm(2, dim=-1)\n"
           "d = torch.norm(h, -1)\n"
           "e = h.norm(p=2)\n"
           "f = h.norm()\n"
           "g = h.norm(-1)  # pitfall-ok\n"
           "k = torch.linalg.vector_norm(h, dim=-1)\n")
    found = pf.check_norm_usage(src)
    assert [f.line for f in found] == [1, 4]
    assert pf.check_norm_usage("x = h.norm(dim=-1)\n") == []
    nb = json.dumps({"cells": [{"cell_type": "code", "source": ["y = z.norm(-1)\n"]},
                               {"cell_type": "markdown", "source": ["h.norm(-1) in prose"]}]})
    assert len(pf.check_norm_usage(nb)) == 1
    assert [f.line for f in pf.check_norm_usage("%time\nq = h.norm( -1)\nr = h.norm(dim=-1)\n")] == [2]
    assert pf.check_norm_usage_in_files(pf.package_sources()) == {}   # our own code is clean


def test_pitfall_2_library_cosine_shrinks_100x_at_1e_10():
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(128, 256, generator=gen, dtype=torch.float64)
    direction = a + torch.randn(128, 256, generator=gen, dtype=torch.float64)
    g = direction / torch.sqrt((direction ** 2).sum(1, keepdim=True)) * 1e-10
    hand = (a * g).sum(1) / (torch.sqrt((a ** 2).sum(1)) * torch.sqrt((g ** 2).sum(1)))
    lib = F.cosine_similarity(a, g, dim=-1)
    # the effect: the library's cosine is the true one times ||g|| / eps = 1e-10 / 1e-8
    assert float(hand.mean()) > 0.5
    torch.testing.assert_close(lib, hand / 100, rtol=1e-9, atol=0)
    res = pf.pitfall_cosine_eps(a, g, g_norm=None)
    assert res.numbers["hand-written cosine (mean)"] == pytest.approx(float(hand.mean()))
    assert res.numbers["F.cosine_similarity (mean)"] == pytest.approx(float(lib.mean()))
    assert res.numbers["shrink factor"] == pytest.approx(100, rel=1e-6) and res.holds
    # at ||g|| = 1 the two agree, and the function says the pitfall does not show
    same = pf.pitfall_cosine_eps(a, g, g_norm=1.0)
    assert F.cosine_similarity(a, g * 1e10, dim=-1).mean() == pytest.approx(float(hand.mean()))
    assert same.numbers["F.cosine_similarity (mean)"] == pytest.approx(float(hand.mean()))
    assert not same.holds
    # the constructed default: pairs at cosine 0.6, library 100x smaller
    default = pf.pitfall_cosine_eps()
    assert default.numbers["hand-written cosine (mean)"] == pytest.approx(0.6, abs=1e-9)
    assert default.numbers["F.cosine_similarity (mean)"] == pytest.approx(0.006, rel=1e-6)


def test_pitfall_3_fp16_gradient_is_zero_where_float64_is_not(dfa_run):
    model, batches = dfa_run.result.model, _batches(dfa_run.result)
    res = pf.pitfall_fp16(model, batches)
    per = res.numbers["per dtype"]
    # independently: the true dCE/dh_(L-1) through the whole float64 model, with g_L rescaled to
    # the hidden-layer size (5e-10) by the same factor
    _, _, grads = bp_grads64(model, batches)
    c = pf.FP16_GRAD_NORM / float(torch.sqrt((grads[-1] ** 2).sum(1)).median())
    g_L, ref = c * grads[-1], torch.sqrt(((c * grads[-2]) ** 2).sum(1))
    assert bool((ref > 0).all())                                   # non-zero on every sample
    assert int(g_L.to(torch.float16).count_nonzero()) == 0         # fp16 holds none of g_L
    assert int(g_L.to(torch.bfloat16).count_nonzero()) == int(g_L.count_nonzero())
    # the function measured exactly that
    assert res.numbers["float64 median ||g_{L-1}||"] == pytest.approx(float(ref.median()),
                                                                      rel=1e-4)
    assert per["float16"]["median ||g_{L-1}||"] == 0.0
    assert per["float16"]["samples with an all-zero gradient"] == 1.0
    assert per["bfloat16"]["median ||g_{L-1}||"] == pytest.approx(float(ref.median()), rel=0.05)
    assert per["float32"]["median ||g_{L-1}||"] == pytest.approx(float(ref.median()), rel=1e-3)
    assert res.holds
    assert pf.underflow_share(torch.full((4,), 3e-11), torch.float16) == 1.0
    assert pf.underflow_share(torch.full((4,), 3e-11), torch.bfloat16) == 0.0


def test_pitfall_4_fresh_feedback_gives_gamma_near_0_the_saved_one_does_not(aligned_dfa):
    model, rule, batches = aligned_dfa.model, aligned_dfa.rule, _batches(aligned_dfa)
    res = pf.pitfall_feedback(model, rule, batches)
    _, saved = gamma_by_hand(model, rule.feedback, batches)
    fresh_rule = pf.fresh_rule(rule, model, 2 ** 31 - 1)
    _, fresh = gamma_by_hand(model, fresh_rule.feedback, batches)
    # the function's Γ (saved and fresh) is the cosine computed by hand
    assert res.numbers["saved: per-layer Γ (raw)"] == pytest.approx(saved, abs=1e-6)
    assert res.numbers["fresh: per-layer Γ (raw)"] == pytest.approx(fresh, abs=1e-6)
    assert saved == pytest.approx(gamma(model, batches, rule=rule).per_layer_raw, abs=1e-6)
    # the effect: with the saved feedback layer 0 is aligned; over fresh draws Γ averages to 0
    draws = np.array([gamma_by_hand(model, pf.fresh_rule(rule, model, s).feedback, batches)[1]
                      for s in range(1000, 1016)])
    assert saved[0] > 0.25, saved
    assert np.abs(draws.mean(0)).max() < 0.05, draws.mean(0)
    assert saved[0] > np.abs(draws[:, 0]).max(), (saved[0], draws[:, 0])  # measured: 0.33 > 0.18
    assert res.holds
    # why a fresh draw must come from another seed: the run's own seed reproduces its matrices
    cfg = aligned_dfa.config
    again = build_rule("dfa", model, {}, make_generator(cfg.seed, "feedback"))
    assert torch.equal(again.feedback, rule.feedback)
    assert not torch.equal(pf.fresh_rule(rule, model, 7).feedback, rule.feedback)
    with pytest.raises(ValueError, match="no feedback"):
        pf.pitfall_feedback(model, build_rule("bp", model, {}, make_generator(1, "feedback")),
                            batches)


def test_pitfall_5_the_aggregation_moves_gamma(aligned_dfa):
    model, rule, batches = aligned_dfa.model, aligned_dfa.rule, _batches(aligned_dfa)
    cos, per_layer = gamma_by_hand(model, rule.feedback, batches)
    by_hand = {
        "mean over samples, mean over layers (headline form)": np.mean(per_layer),
        "median over samples, median over layers": np.median([np.median(c) for c in cos]),
        "mean over samples, mean over layers 1..L (layer 0 left out)": np.mean(per_layer[1:]),
        "deepest layer only, mean over samples": per_layer[-1],
        "median of all (sample, layer) cosines": np.median(np.concatenate(cos)),
    }
    res = pf.pitfall_aggregation(model, rule, batches)
    raw = res.numbers["raw aggregations"]
    for name, value in by_hand.items():
        assert raw[name] == pytest.approx(value, abs=1e-6), name
    # the effect: on the same cosines, the aggregation changes Γ by more than the headline itself
    spread = max(by_hand.values()) - min(by_hand.values())
    assert spread > abs(by_hand["mean over samples, mean over layers (headline form)"]), by_hand
    lo, hi = res.numbers["range"]
    assert lo <= min(by_hand.values()) and hi >= max(by_hand.values()) and res.holds
    g = gamma(model, batches, rule=rule)
    assert res.numbers["GammaResult.alternatives (floor rule applied)"]["median over layers"] \
        == g.alternatives["median over layers"]
    lo_p, hi_p = published.DFA_GAMMA_AGGREGATION_RANGE
    assert f"[{lo_p:+.3f}, {hi_p:+.3f}]" in res.paper


def test_pitfall_6_layer_0_carries_the_headline(aligned_dfa):
    model, rule, batches = aligned_dfa.model, aligned_dfa.rule, _batches(aligned_dfa)
    _, per_layer = gamma_by_hand(model, rule.feedback, batches)
    res = pf.pitfall_layer0(model, rule, batches)
    assert res.numbers["per-layer Γ (raw)"] == pytest.approx(per_layer, abs=1e-6)
    # the effect: layer 0 is aligned, the deeper layers are not (h_1 shares h_0's feedback
    # matrix B_0, so Γ_1 follows Γ_0), and the mean over layers hides it
    assert per_layer[0] > 2 * max(abs(v) for v in per_layer[2:]), per_layer
    assert abs(np.mean(per_layer)) < per_layer[0] / 2
    assert res.numbers["mean over layers (raw)"] == pytest.approx(np.mean(per_layer), abs=1e-6)
    assert res.numbers["layer 0's share of sum |Γ_k|"] == pytest.approx(
        abs(per_layer[0]) / sum(abs(v) for v in per_layer), abs=1e-6)
    assert res.holds == (abs(per_layer[0]) > max(abs(v) for v in per_layer[1:]))
    assert f"{published.DFA_GAMMA['layer0']:+.2f}" in res.paper


def test_extra_pitfall_gamma_refuses_a_rule_without_its_saved_state(dfa_run, tmp_path):
    model, rule, batches = dfa_run.result.model, dfa_run.result.rule, _batches(dfa_run.result)
    saved = rule.feedback.clone()
    # the effect: a placeholder never filled from the checkpoint gives no credit at all, so any
    # cosine printed from it would be made up; gamma refuses it instead of printing one
    zeroed = copy.deepcopy(rule)
    zeroed._buffers["feedback"] = torch.zeros_like(rule.feedback)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert all(float(a.abs().max()) == 0.0 for a in dfa_credits64(model, zeroed.feedback, x, y))
    assert all(float(a.abs().max()) == 0.0 for a in zeroed.credits(model, x, y))
    with pytest.raises(GammaUnavailable):
        gamma(model, batches, rule=zeroed)
    res = pf.pitfall_missing_state(model, rule, batches)
    assert set(res.numbers["messages"]) == {"missing", "zeros"}
    assert all(m.startswith("Γ N/A") for m in res.numbers["messages"].values())
    assert res.holds
    assert torch.equal(rule.feedback, saved)           # the trained rule itself is untouched
    # the checklist table
    results = [pf.pitfall_norm(pf.hidden_state(model, batches)), pf.pitfall_cosine_eps(), res]
    paths = pf.save_pitfalls_table(results, TINY, tmp_path, seeds=[42])
    table = json.loads(paths["json"].read_text())
    assert [r["key"] for r in table["rows"]] == ["1", "2", "extra"]
    assert table["columns"] == list(pf.TABLE_COLUMNS)
    assert (tmp_path / "tables/05_pitfalls.csv").exists() and "synthetic data" in table["caption"]
