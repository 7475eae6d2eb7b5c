"""EP's credit against the exact per-sample BP gradient (autograd, float64), and its options.

The maths: at the nudged minimum of E + beta * CE the prediction errors satisfy the backward pass,
so -eps_k / beta -> dCE/dh_k as beta -> 0 (bias O(beta); O(beta^2) with the symmetric nudge) and
T -> infinity (the relaxation converges geometrically). The tests check each limit on a float64
model whose blocks are far from the identity (W2 scaled up), so the Jacobians matter.
"""
import math

import pytest
import torch

from fa_nb_utils.ep import EP, EPOptions, relax
from fa_nb_utils.alignment import per_sample_cosine
from fa_nb_utils.model import ResidualMLP
from fa_nb_utils.paper.profiles import PROFILES
from fa_nb_utils.rules import bp_credits

BETAS = (1e-1, 1e-2, 1e-3)
STEPS = (25, 50, 100, 200, 400)
ETA = 0.3  # stable here: the curvature along a layer is 1 + |I + df/dh|^2 < 2 / ETA


def _setup(residual=True, seed=0):
    torch.manual_seed(seed)
    model = ResidualMLP(48, 64, 10, 4, seed=seed, residual=residual).double()
    with torch.no_grad():
        for block in model.blocks:
            block.fc2.weight.normal_(0.0, 0.05)  # branches ~0.2 of the stream: Jacobians matter
    x = torch.randn(64, 48, dtype=torch.float64)
    y = torch.randint(0, 10, (64,))
    return model, x, y


def _rule(model, **opts):
    opts.setdefault("step_size", ETA)
    return EP(model, EPOptions(**opts), torch.Generator().manual_seed(0))


def _rel_errors(a, g):
    return [float((ak - gk).norm() / gk.norm()) for ak, gk in zip(a, g)]


@pytest.fixture(scope="module")
def table():
    """Relative error ||a_k - g_k|| / ||g_k|| over the batch, per layer, for beta x T."""
    model, x, y = _setup()
    g = bp_credits(model, x, y)
    out = {}
    for beta in BETAS:
        for steps in STEPS:
            a = _rule(model, beta=beta, steps=steps, step_size=ETA).credits(model, x, y)
            out[beta, steps] = _rel_errors(a, g)
    return out


def test_error_shrinks_as_T_grows_at_every_layer(table):
    # The relaxation contracts geometrically towards the beta-equilibrium; the error against the
    # gradient falls with it while that distance dominates the O(beta) bias, i.e. for beta <= 1e-2
    # over this table. (At beta = 0.1 the two are of one size and can partly cancel.)
    for beta in BETAS[1:]:
        for t0, t1 in zip(STEPS, STEPS[1:]):
            for k, (e0, e1) in enumerate(zip(table[beta, t0], table[beta, t1])):
                assert e1 <= e0, (beta, t0, t1, k, e0, e1)


def test_error_shrinks_as_beta_shrinks_once_converged(table):
    t = STEPS[-1]  # converged: what is left is the O(beta) bias
    for b0, b1 in zip(BETAS, BETAS[1:]):
        for k, (e0, e1) in enumerate(zip(table[b0, t], table[b1, t])):
            assert e1 < e0, (b0, b1, k, e0, e1)


def test_smallest_beta_largest_T_is_within_one_percent_everywhere(table):
    errs = table[BETAS[-1], STEPS[-1]]
    assert max(errs) < 0.01, errs


def test_symmetric_nudge_cancels_the_first_order_bias():
    model, x, y = _setup()
    g = bp_credits(model, x, y)
    one = _rel_errors(_rule(model, beta=0.1, steps=400).credits(model, x, y), g)
    sym = _rel_errors(_rule(model, beta=0.1, steps=400, nudge="symmetric").credits(model, x, y), g)
    assert max(sym) < max(one) / 3, (one, sym)


def test_without_residual_add_the_limit_is_still_the_gradient():
    model, x, y = _setup(residual=False)
    with torch.no_grad():  # a stream that neither vanishes nor explodes without the skip
        for block in model.blocks:
            block.fc2.weight.normal_(0.0, 0.2)
            block.fc1.weight.mul_(0.1)
    g = bp_credits(model, x, y)
    # the gradient is large here (|g_L| ~ 50 per batch), so the O(beta) bias needs a smaller beta
    errs = _rel_errors(_rule(model, beta=1e-4, steps=400).credits(model, x, y), g)
    assert max(errs) < 0.01, errs


def test_state_difference_form_points_along_the_cumulative_error_credit():
    model, x, y = _setup()
    a = _rule(model, beta=1e-3, steps=200).credits(model, x, y)
    sd = _rule(model, beta=1e-3, steps=200, credit="state_diff").credits(model, x, y)
    cum = torch.cumsum(torch.stack(a), 0)
    for k in range(len(a)):
        cos = torch.nn.functional.cosine_similarity(sd[k].flatten(), cum[k].flatten(), dim=0)
        assert cos > 0.95, (k, float(cos))  # equal up to the blocks' Jacobian terms
    # ... and its size is not the gradient's: it accumulates over the layers below
    g = bp_credits(model, x, y)
    assert sd[-1].norm() > 1.5 * g[-1].norm()


def test_relaxation_touches_only_states():
    model, x, y = _setup()
    with torch.no_grad():
        _, hs = model(x, return_hidden=True)
    before = [p.detach().clone() for p in model.parameters()]
    relax(model, hs, y, 0.1, 5, 0.4)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def _old_credits(model, x, y, beta, steps, eta):
    """The relaxation before momentum: gradient descent on the states h themselves."""
    with torch.no_grad():
        _, hs = model(x, return_hidden=True)
    s, target0 = torch.stack(hs), hs[0]

    def errors(s):
        return torch.cat([(s[0] - target0)[None],
                          s[1:] - s[:-1] - torch.stack([b(h) for b, h in zip(model.blocks, s)])])

    for _ in range(steps):
        s = s.detach().requires_grad_(True)
        cost = torch.nn.functional.cross_entropy(model.readout(s[-1]), y, reduction="sum")
        (g,) = torch.autograd.grad(0.5 * errors(s).pow(2).sum() + beta * cost, s)
        s = s - eta * g
    with torch.no_grad():
        return list(-errors(s) / beta)


def _cosines(a, g):
    return [float(per_sample_cosine(ak, gk)[0].mean()) for ak, gk in zip(a, g)]


def test_momentum_reaches_the_fixed_point_of_gradient_descent_on_the_states():
    model, x, y = _setup()
    x, y = x[:8], y[:8]
    old = _old_credits(model, x, y, 1e-3, 3000, ETA)       # converged
    new = _rule(model, beta=1e-3, steps=300, momentum=0.7).credits(model, x, y)
    assert max(_rel_errors(new, old)) < 1e-5, _rel_errors(new, old)


@pytest.mark.parametrize("options,old_steps",
                         [(PROFILES["smoke"].rule_options["ep"], 10), ({}, 20)])
def test_fewer_steps_match_the_credit_of_the_relaxation_before(options, old_steps):
    # the smoke profile's and the default relaxation against the T they replace: a cosine with the
    # BP gradient at least as high at every layer (beta and eta as there)
    model, x, y = _setup()
    g = bp_credits(model, x, y)
    old = _cosines(_old_credits(model, x, y, 0.01, old_steps, 0.2), g)
    new = _cosines(_rule(model, **{**options, "step_size": 0.2}).credits(model, x, y), g)
    assert EPOptions(**options).steps < old_steps
    assert all(c >= c_old for c, c_old in zip(new, old)), (new, old)


@pytest.mark.parametrize("momentum", [-0.1, 1.0, 1.5, float("nan")])
def test_momentum_outside_zero_one_is_refused(momentum):
    with pytest.raises(ValueError, match="EP option momentum must be"):
        EPOptions(momentum=momentum)


@pytest.mark.parametrize("bad", [
    {"beta": 0.0}, {"beta": -0.1}, {"beta": float("nan")}, {"beta": float("inf")},
    {"steps": 0}, {"steps": 2.5}, {"steps": True}, {"step_size": 0.0}, {"step_size": -1.0},
    {"step_size": float("nan")}, {"credit": "energy"}, {"nudge": "both"},
])
def test_nonsense_options_are_refused(bad):
    with pytest.raises(ValueError, match="EP option"):
        EPOptions(**bad)


def test_credits_are_per_sample_and_shaped_like_the_states():
    model, x, y = _setup()
    a = _rule(model, beta=0.01, steps=10).credits(model, x, y)
    assert len(a) == model.num_blocks + 1
    assert all(t.shape == (64, 64) and math.isfinite(float(t.sum())) for t in a)
    # per sample: changing one sample's label changes only that sample's credit
    y2 = y.clone()
    y2[0] = (y2[0] + 1) % 10
    b = _rule(model, beta=0.01, steps=10).credits(model, x, y2)
    assert not torch.allclose(a[-1][0], b[-1][0])
    assert torch.allclose(a[-1][1:], b[-1][1:], atol=1e-12)


def test_stacked_blocks_are_the_blocks_and_the_batched_relaxation_is_the_looped_one():
    from fa_nb_utils import ep as epmod
    model, x, y = _setup()
    with torch.no_grad():
        _, hs = model(x, return_hidden=True)
    stacked = epmod.StackedBlocks(model)(torch.stack(hs[:-1]))
    for l, block in enumerate(model.blocks):
        torch.testing.assert_close(stacked[l], block(hs[l]), rtol=1e-12, atol=1e-12)
    batched = relax(model, hs, y, 0.01, 20, ETA)
    # the looped path: a model whose blocks cannot be stacked
    looped_model = _setup()[0]
    looped_model.load_state_dict(model.state_dict())
    monkey = pytest.MonkeyPatch()
    monkey.setattr(epmod.StackedBlocks, "fits", staticmethod(lambda m: False))
    try:
        looped = relax(looped_model, hs, y, 0.01, 20, ETA)
    finally:
        monkey.undo()
    for a, b in zip(batched[1], looped[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# EP in the trainer: it learns, its options are recorded and keyed, its runs resume exactly
# ---------------------------------------------------------------------------------------------
def _ep_config(data_root, **kw):
    from fa_nb_utils.config import TrainConfig
    base = dict(rule="ep", rule_options={"steps": 10}, epochs=3, seed=5, data="synthetic",
                synthetic_n_train=2000, synthetic_n_test=1280, d_hidden=64, num_blocks=2,
                limit_train=1000, threads=1, progress=False, data_root=str(data_root))
    return TrainConfig(**{**base, **kw})


def test_ep_lowers_the_training_loss_and_records_its_options(data_root, synthetic_folder):
    from fa_nb_utils.trainer import train
    res = train(_ep_config(data_root, epochs=4))
    losses = [e["train_loss"] for e in res.trace[1:]]
    assert losses[-1] < 0.97 * losses[0], losses
    assert res.trace[-1]["acc_eval"] > 0.2  # chance is 0.1
    relax_meta = res.metadata["rule"]["relaxation"]
    assert (relax_meta["beta"], relax_meta["steps"], relax_meta["step_size"]) == (0.01, 10, 0.2)
    assert res.metadata["rule"]["state"] == [] and "none" in res.metadata["rule"]["state_note"]


def test_ep_options_are_in_the_run_key(data_root):
    from fa_nb_utils.runs import run_key_of
    key = lambda **o: run_key_of(_ep_config(data_root, rule_options=o).to_dict(), "fp", "v")
    assert key() == key(steps=5, beta=0.01, step_size=0.2, momentum=0.0)  # the defaults
    assert key() != key(steps=6) and key() != key(momentum=0.5)
    assert key() != key(beta=0.02) and key() != key(nudge="symmetric")


def test_ep_checkpoints_round_trip_and_resume_bit_identically(checkpoint_each_epoch, tmp_path, data_root,
                                                              synthetic_folder, monkeypatch):
    import importlib

    from fa_nb_utils.checkpoint import load_checkpoint
    from fa_nb_utils.checkpoint import CHECKPOINT_NAME
    from fa_nb_utils.trainer import train
    trainer = importlib.import_module("fa_nb_utils.trainer")
    fresh = train(_ep_config(data_root), runs_root=tmp_path / "fresh")
    real, calls = trainer.train_step, [0]

    def interrupt(*a, **k):
        calls[0] += 1
        if calls[0] == 2 * 8 + 3:  # 8 steps per epoch: during epoch 3
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(trainer, "train_step", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(_ep_config(data_root), runs_root=tmp_path / "runs")
    monkeypatch.setattr(trainer, "train_step", real)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert load_checkpoint(run_dir / CHECKPOINT_NAME)["epoch"] == 2
    resumed = train(_ep_config(data_root), runs_root=tmp_path / "runs")
    assert resumed.metadata["resumed_from_epoch"] == 2
    strip = lambda t: [{k: v for k, v in e.items() if k != "seconds"} for e in t]
    assert strip(resumed.trace) == strip(fresh.trace)
    for p, q in zip(resumed.model.state_dict().values(), fresh.model.state_dict().values()):
        assert torch.equal(p, q)
    again = train(_ep_config(data_root), runs_root=tmp_path / "runs")  # finished: reused
    assert strip(again.trace) == strip(fresh.trace)
