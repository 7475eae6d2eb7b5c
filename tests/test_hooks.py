"""Any model, no rewrite: the protocol through forward hooks on named modules.

A small ViT and a small GPT-style decoder, built here, give the same report (every number, the
verdicts) and the same Γ through `hidden_modules` as through a wrapper that returns their hidden
states itself. A module name that does not exist, a module that runs twice or never in one forward,
and a module whose output is not a tensor each get a clear error, and no hook is left behind.
"""
import re

import pytest
import torch
import torch.nn as nn

from fa_nb_utils.alignment import gamma
from fa_nb_utils.hooks import HookedModel, resolve_hidden_modules
from fa_nb_utils.measures import ModelContractError
from fa_nb_utils.monitor import Monitor
from fa_nb_utils.protocol import diagnose


class Block(nn.Module):
    """Pre-LN transformer block: h + attn(LN h), then + MLP(LN h); causal when asked."""

    def __init__(self, d, heads=4, causal=False):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.causal = causal

    def forward(self, h):
        z = self.ln1(h)
        mask = None
        if self.causal:
            t = h.shape[1]
            mask = torch.triu(torch.ones(t, t, dtype=torch.bool, device=h.device), 1)
        a, _ = self.attn(z, z, z, attn_mask=mask, need_weights=False)
        h = h + a
        return h + self.mlp(self.ln2(h))


class PatchEmbed(nn.Module):
    def __init__(self, d, patch=4, img=16):
        super().__init__()
        self.proj = nn.Conv2d(3, d, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, (img // patch) ** 2 + 1, d) * 0.02)

    def forward(self, x):
        p = self.proj(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls.expand(x.shape[0], -1, -1), p], dim=1) + self.pos


class ViT(nn.Module):
    """A ViT-Mini: patch embedding with a cls token, pre-LN blocks, terminal LN, head on cls."""

    def __init__(self, d=32, depth=3, classes=10):
        super().__init__()
        self.embed = PatchEmbed(d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(depth))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x):           # no return_hidden: the protocol reads it through hooks
        h = self.embed(x)
        for b in self.blocks:
            h = b(h)
        return self.head(self.norm(h)[:, 0])


class TokenEmbed(nn.Module):
    def __init__(self, vocab, d, t):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(t, d)

    def forward(self, ids):
        return self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device))


class GPT(nn.Module):
    """A GPT-style decoder classifying a sequence from its last position (Hugging Face-like
    output: a tuple whose first element is the logits)."""

    def __init__(self, vocab=50, d=32, depth=3, t=12, classes=10):
        super().__init__()
        self.tok = TokenEmbed(vocab, d, t)
        self.h = nn.ModuleList(Block(d, causal=True) for _ in range(depth))
        self.ln_f = nn.LayerNorm(d)
        self.score = nn.Linear(d, classes)

    def forward(self, ids):
        h = self.tok(ids)
        for b in self.h:
            h = b(h)
        return (self.score(self.ln_f(h)[:, -1]), h)


class ViTReturnHidden(nn.Module):
    """The reference: the ViT's forward written out again, returning its states itself."""

    def __init__(self, vit):
        super().__init__()
        self.vit = vit

    def forward(self, x, return_hidden=False):
        h = self.vit.embed(x)
        hs = [h]
        for b in self.vit.blocks:
            h = b(h)
            hs.append(h)
        logits = self.vit.head(self.vit.norm(h)[:, 0])
        return (logits, hs) if return_hidden else logits


class GPTReturnHidden(nn.Module):
    def __init__(self, gpt):
        super().__init__()
        self.gpt = gpt

    def forward(self, ids, return_hidden=False):
        h = self.gpt.tok(ids)
        hs = [h]
        for b in self.gpt.h:
            h = b(h)
            hs.append(h)
        logits = self.gpt.score(self.gpt.ln_f(h)[:, -1])
        return (logits, hs) if return_hidden else logits


def _image_batches(n=3, b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, 3, 16, 16, generator=g), torch.randint(0, 10, (b,), generator=g))
            for _ in range(n)]


def _token_batches(n=3, b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 50, (b, 12), generator=g), torch.randint(0, 10, (b,), generator=g))
            for _ in range(n)]


def _same_report(a, b):
    da, db = a.to_dict(), b.to_dict()
    for key in ("residual_norms", "bp_grad_norms", "backward_gains", "cross_batch_stability",
                "headline_acc", "output_error_norm", "verdicts", "fired", "alignment"):
        assert da[key] == db[key], key


@pytest.mark.parametrize("kind", ["vit", "gpt"])
def test_hooks_give_the_same_report_and_gamma_as_a_return_hidden_wrapper(kind):
    torch.manual_seed(0)
    if kind == "vit":
        model, batches = ViT(), _image_batches()
        names, ref = ["embed", "blocks.0", "blocks.1", "blocks.2"], ViTReturnHidden(model)
    else:
        model, batches = GPT(), _token_batches()
        names, ref = ["tok", "h.0", "h.1", "h.2"], GPTReturnHidden(model)

    def credit_fn(x, y):  # a stand-in method: the true gradient's sign pattern, per layer
        logits, hs = ref(x, return_hidden=True)
        loss = nn.functional.cross_entropy(logits, y, reduction="sum")
        return [g.sign() for g in torch.autograd.grad(loss, hs)]

    hooked = diagnose(model, batches, hidden_modules=names, credit_fn=credit_fn)
    direct = diagnose(ref, batches, credit_fn=credit_fn)
    _same_report(hooked, direct)
    assert len(hooked.residual_norms) == 4 and hooked.num_eval_samples == 24
    # the same through a pattern, in the model's module order
    pattern = r"embed|blocks\.\d+" if kind == "vit" else r"tok|h\.\d+"
    _same_report(diagnose(model, batches, hidden_modules=pattern), diagnose(ref, batches))
    g = gamma(model, batches, credit_fn=credit_fn, hidden_modules=names)
    assert g.to_dict() == gamma(ref, batches, credit_fn=credit_fn).to_dict()
    # the model is left as it was: no hook, same mode
    assert all(not m._forward_hooks for m in model.modules())
    assert model.training


def test_the_monitor_reads_a_hooked_model():
    model, batches = ViT(), _image_batches()
    monitor = Monitor(hidden_modules=r"embed|blocks\.\d+")
    assert monitor.check(model, batches, epoch=0, acc_eval=0.1) is None
    assert len(monitor.last_report.residual_norms) == 4


def test_a_module_name_that_does_not_exist_is_named_with_a_suggestion():
    model = ViT()
    with pytest.raises(ModelContractError, match=r"'blokcs\.0'.*did you mean 'blocks\.0'"):
        diagnose(model, _image_batches(), hidden_modules=["embed", "blokcs.0"])
    with pytest.raises(ModelContractError, match="matches none"):
        diagnose(model, _image_batches(), hidden_modules=r"layers\.\d+")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        resolve_hidden_modules(model, "blocks.(")
    with pytest.raises(ValueError, match="more than once"):
        resolve_hidden_modules(model, ["embed", "embed"])
    with pytest.raises(TypeError, match="module names"):
        resolve_hidden_modules(model, [0, 1])
    with pytest.raises(ValueError, match="credit_fn"):
        diagnose(model, _image_batches(), hidden_modules=["embed", "blocks.0"], rule=object())


class Shared(nn.Module):
    """One block applied twice (weights shared across depth)."""

    def __init__(self):
        super().__init__()
        self.embed, self.block, self.head = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.unused = nn.Linear(8, 8)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.block(h)
        h = h + self.block(h)
        return self.head(h)


class TupleBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, h):
        return h + self.fc(h), self.fc.weight


class TupleModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.block, self.head = nn.Linear(6, 8), TupleBlock(), nn.Linear(8, 3)

    def forward(self, x):
        h, _ = self.block(self.embed(x))
        return self.head(h)


def _vec_batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(5, 6, generator=g), torch.randint(0, 3, (5,), generator=g))
            for _ in range(2)]


@pytest.mark.parametrize("model, names, message", [
    (Shared(), ["embed", "block"], r"'block' ran more than once in one forward"),
    (Shared(), ["embed", "unused"], r"\['unused'\] did not run in the forward"),
    (TupleModel(), ["embed", "block"], r"'block' returned a tuple, not a tensor"),
])
def test_a_module_that_breaks_the_contract_gets_a_clear_error_and_no_hook_stays(model, names,
                                                                                  message):
    with pytest.raises(ModelContractError, match=message):
        diagnose(model, _vec_batches(), hidden_modules=names)
    assert all(not m._forward_hooks for m in model.modules())
    # the plain forward of the wrapper is the model's own
    wrapped = HookedModel(model, names)
    x = _vec_batches()[0][0]
    assert torch.equal(wrapped(x), model(x))


def test_the_readme_transformer_from_a_config():
    """The README's example: torch's own TransformerEncoder, built from its arguments."""
    torch.manual_seed(0)

    class Classifier(nn.Module):
        def __init__(self, d=64, depth=4, classes=10):
            super().__init__()
            self.embed = nn.Linear(16, d)
            layer = nn.TransformerEncoderLayer(d, nhead=4, batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
            self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, classes)

        def forward(self, x):                       # x: (N, T, 16)
            return self.head(self.norm(self.encoder(self.embed(x))).mean(1))

    model = Classifier()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 10, 16, generator=g), torch.randint(0, 10, (16,), generator=g))
               for _ in range(4)]
    report = diagnose(model, batches, hidden_modules=r"embed|encoder\.layers\.\d+")
    assert len(report.residual_norms) == 5 and len(report.backward_gains) == 5
    assert report.max_block_growth < 5 and not report.fired["a"] and not report.fired["b"]
    assert re.search(r"h_4: ", str(report))
    assert all(not m._forward_hooks for m in model.modules())


class Registered(nn.Module):
    """Registers its blocks before its embedding: module order is not forward order. (Its
    blocks' outputs are branches, not stream states; only the order is tested here.)"""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(2))
        self.embed, self.head = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = self.embed(x)
        for b in self.blocks:
            h = h + b(h)
        return self.head(h)


def test_states_come_in_forward_order_and_a_list_out_of_order_is_refused():
    model = Registered()
    x = _vec_batches()[0][0]
    _, hs = HookedModel(model, r"embed|blocks\.\d+")(x, return_hidden=True)
    h = model.embed(x)
    torch.testing.assert_close(hs[0], h)                     # embed first, as the forward runs
    torch.testing.assert_close(hs[1], model.blocks[0](h))
    torch.testing.assert_close(hs[2], model.blocks[1](h + model.blocks[0](h)))
    with pytest.raises(ModelContractError, match=r"not in the order the forward computes them"):
        diagnose(model, _vec_batches(), hidden_modules=["blocks.0", "embed", "blocks.1"])
