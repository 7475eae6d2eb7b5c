"""The pre-LayerNorm residual MLP of the paper and its control variants.

    h_0     = embed(x)                                  Linear(input_dim, d), no activation
    f_l(h)  = W2 GELU(W1 LN(h))                         W1, W2: d x d, exact (erf) GELU
    h_{l+1} = h_l + f_l(h_l)                            (control: h_{l+1} = f_l(h_l))
    logits  = out_head(out_ln(h_L))                     (control: no terminal LayerNorm)

`model(x, return_hidden=True)` returns `(logits, [h_0, ..., h_L])`: the live tensors of the forward
graph, never modified in place, so that a caller can differentiate the loss with respect to any
h_l. This is the contract `diagnose` relies on for any model.

Initialisation: PyTorch's default Linear/LayerNorm init, except W2 ~ N(0, 0.01^2) with zero bias so
that each branch starts at about a tenth of the stream (the paper's init). All draws come from one
generator, so the same seed gives the same weights on every device.
Not here: the learning rules (rules.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

W2_INIT_STD = 0.01
LN_EPS = 1e-5


def default_init(layer: nn.Linear | nn.Conv2d, generator: torch.Generator) -> None:
    """PyTorch's default Linear/Conv2d init (kaiming_uniform with a=sqrt(5)) from `generator`."""
    bound = 1.0 / math.sqrt(layer.weight[0].numel())  # 1 / sqrt(fan_in)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        if layer.bias is not None:
            layer.bias.uniform_(-bound, bound, generator=generator)


class ResidualBlock(nn.Module):
    """One block's *branch* f_l(h) = W2 GELU(W1 LN(h)); the model adds the skip."""

    def __init__(self, d: int):
        super().__init__()
        self.ln = nn.LayerNorm(d, eps=LN_EPS)
        self.fc1 = nn.Linear(d, d)
        self.fc2 = nn.Linear(d, d)

    def reset_parameters(self, generator: torch.Generator) -> None:
        self.ln.reset_parameters()
        default_init(self.fc1, generator)
        with torch.no_grad():
            self.fc2.weight.normal_(0.0, W2_INIT_STD, generator=generator)
            self.fc2.bias.zero_()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.ln(h)), approximate="none"))


class ResidualMLP(nn.Module):
    """Pre-LN residual MLP: the paper's architecture, with the notation of docs/rules.md.

    Args:
        input_dim: flattened input size (3072 for CIFAR-10); d_hidden: stream width d;
        num_classes: number of logits; num_blocks: L (hidden states h_0..h_L).
        terminal_ln, residual: False gives the "no terminal LayerNorm" / "no residual add" control.
        seed: parameters drawn from a generator seeded with it; else from `generator`, else from
            torch's global RNG.
    """

    def __init__(
        self,
        input_dim: int = 3072,
        d_hidden: int = 256,
        num_classes: int = 10,
        num_blocks: int = 4,
        *,
        terminal_ln: bool = True,
        residual: bool = True,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        for name, value in (("input_dim", input_dim), ("d_hidden", d_hidden),
                            ("num_classes", num_classes)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ResidualMLP: {name} must be a positive int, got {value!r}")
        if not isinstance(num_blocks, int) or num_blocks < 0:
            raise ValueError(f"ResidualMLP: num_blocks must be an int >= 0, got {num_blocks!r}")
        self.input_dim = input_dim
        self.d_hidden = d_hidden
        self.num_classes = num_classes
        self.num_blocks = num_blocks
        self.terminal_ln = terminal_ln
        self.residual = residual
        self.embed = nn.Linear(input_dim, d_hidden)
        self.blocks = nn.ModuleList(ResidualBlock(d_hidden) for _ in range(num_blocks))
        self.out_ln = nn.LayerNorm(d_hidden, eps=LN_EPS) if terminal_ln else nn.Identity()
        self.out_head = nn.Linear(d_hidden, num_classes)
        self.reset_parameters(init_generator(seed, generator))

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Redraw every parameter with the paper's init (see the module) from `generator` (CPU)."""
        reset_stream(self, init_generator(None, generator))

    def extra_repr(self) -> str:
        return f"terminal_ln={self.terminal_ln}, residual={self.residual}"

    def flatten_input(self, x: torch.Tensor) -> torch.Tensor:
        """(N, *dims) -> (N, input_dim), with a clear error when the sizes disagree."""
        if x.dim() < 2:
            raise ValueError(
                f"ResidualMLP expects a batch of shape (N, {self.input_dim}) or (N, C, H, W); "
                f"got shape {tuple(x.shape)}. Add a batch dimension with x.unsqueeze(0)."
            )
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.input_dim:
            raise ValueError(
                f"ResidualMLP was built with input_dim={self.input_dim} but the input has "
                f"{x.shape[1]} features per sample; build the model with "
                f"input_dim={x.shape[1]} or reshape the data."
            )
        return x

    def readout(self, h_last: torch.Tensor) -> torch.Tensor:
        """The terminal stack: logits from h_L."""
        return self.out_head(self.out_ln(h_last))

    def forward(self, x: torch.Tensor, return_hidden: bool = False):
        return stream_forward(self, x, return_hidden)


def stream_forward(model: nn.Module, x: torch.Tensor, return_hidden: bool = False):
    """The forward every model of this package shares: h_0 = embed(flatten_input(x)),
    h_{l+1} = h_l + blocks[l](h_l) (or blocks[l](h_l) without the residual add), logits =
    readout(h_L); with `return_hidden`, (logits, [h_0, ..., h_L]) as live graph tensors."""
    h = model.embed(model.flatten_input(x))
    hiddens = [h]
    for block in model.blocks:
        f = block(h)
        h = h + f if model.residual else f  # never in place: hiddens must not alias
        hiddens.append(h)
    logits = model.readout(h)
    return (logits, hiddens) if return_hidden else logits


def init_generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    """A generator seeded with `seed`, else `generator`, else one seeded from torch's global RNG."""
    if seed is not None:
        return torch.Generator().manual_seed(int(seed))
    if generator is None:
        return torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
    return generator


def reset_stream(model: nn.Module, generator: torch.Generator) -> None:
    """Redraw a stream model's parameters from `generator`: embed, blocks, terminal LN, head."""
    if isinstance(model.embed, nn.Linear):
        default_init(model.embed, generator)
    else:
        model.embed.reset_parameters(generator)
    for block in model.blocks:
        block.reset_parameters(generator)
    if isinstance(model.out_ln, nn.LayerNorm):
        model.out_ln.reset_parameters()
    default_init(model.out_head, generator)
