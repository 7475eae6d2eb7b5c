"""ResidualMLP: the paper's structure, its initialisation facts and the control variants."""
import numpy as np
import pytest
import torch

from fa_nb_utils.measures import accuracy, layer_stats
from fa_nb_utils.model import ResidualMLP


def test_structure_and_seed_attributes():
    m = ResidualMLP(3072, 256, 10, 4, seed=0)
    assert m.num_blocks == 4 and len(m.blocks) == 4
    for name in ("embed", "blocks", "out_ln", "out_head"):
        assert hasattr(m, name)
    b = m.blocks[0]
    assert isinstance(b.ln, torch.nn.LayerNorm) and b.ln.eps == 1e-5 and b.ln.elementwise_affine
    assert b.fc1.weight.shape == (256, 256) and b.fc2.weight.shape == (256, 256)
    assert torch.all(b.fc2.bias == 0)
    assert abs(b.fc2.weight.std().item() - 0.01) < 0.0005
    bound = 1 / np.sqrt(3072)
    assert m.embed.weight.abs().max() <= bound and m.embed.weight.abs().max() > 0.99 * bound


def test_forward_returns_live_unaliased_hiddens():
    m = ResidualMLP(12, 8, 3, 3, seed=0)
    x = torch.randn(5, 12)
    logits, hs = m(x, return_hidden=True)
    assert len(hs) == 4 and logits.shape == (5, 3)
    assert len({h.data_ptr() for h in hs}) == 4          # never modified in place
    torch.testing.assert_close(m(x), logits)
    for l, blk in enumerate(m.blocks):                    # h_{l+1} = h_l + f_l(h_l)
        torch.testing.assert_close(hs[l + 1], hs[l] + blk(hs[l]))
    g = torch.autograd.grad(logits.sum(), hs[2])[0]       # live graph tensors
    assert g.shape == (5, 8)


def test_same_seed_same_weights_and_images_are_flattened():
    a, b = ResidualMLP(3072, 16, 10, 2, seed=7), ResidualMLP(3072, 16, 10, 2, seed=7)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(a(x), a(x.reshape(2, -1)))


def test_control_variants():
    x = torch.randn(4, 10)
    no_ln = ResidualMLP(10, 8, 3, 2, terminal_ln=False, seed=0)
    assert isinstance(no_ln.out_ln, torch.nn.Identity)
    no_res = ResidualMLP(10, 8, 3, 2, residual=False, seed=0)
    _, hs = no_res(x, return_hidden=True)
    torch.testing.assert_close(hs[1], no_res.blocks[0](hs[0]))


def test_bad_input_is_refused_with_the_fix():
    m = ResidualMLP(3072, 8, 10, 1, seed=0)
    with pytest.raises(ValueError, match="input_dim=3072 but the input has 100 features"):
        m(torch.randn(2, 100))
    with pytest.raises(ValueError, match="unsqueeze"):
        m(torch.randn(3072))
    with pytest.raises(ValueError, match="d_hidden must be a positive int"):
        ResidualMLP(3072, 0, 10, 1)


def test_init_facts_on_the_synthetic_data(synthetic_data):
    """The paper's init at d=256, L=4 on normalised CIFAR-like data: ||h_l|| ~ 8.7 at every layer,
    branch ratio ||f_l|| / ||h_l|| ~ 0.1, BP grad norms ~ 8e-3 on the paper scale, accuracy ~ 10%."""
    eval_x = torch.cat([x for x, _ in synthetic_data.eval_batches()])
    eval_y = torch.cat([y for _, y in synthetic_data.eval_batches()])
    ratios, accs = [], []
    for seed in (42, 123, 456):
        m = ResidualMLP(3072, 256, 10, 4, seed=seed).eval()
        stats = layer_stats(m, eval_x, eval_y)
        assert all(7.0 < h < 10.5 for h in stats.residual_norms), stats.residual_norms
        assert all(4e-3 < g < 1.6e-2 for g in stats.bp_grad_norms), stats.bp_grad_norms
        with torch.no_grad():
            _, hs = m(eval_x, return_hidden=True)
            for blk, h in zip(m.blocks, hs):
                ratios.append(float((blk(h).norm(dim=-1) / h.norm(dim=-1)).median()))
        accs.append(accuracy(m, synthetic_data.test_x, synthetic_data.test_y))
    assert all(0.05 < r < 0.2 for r in ratios), ratios
    assert 0.05 < np.mean(accs) < 0.16, accs
