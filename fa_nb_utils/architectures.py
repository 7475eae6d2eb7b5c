"""The paper's other architectures, ViT-Mini and a small CNN, built to the rules' model interface
(docs/rules.md, "Other architectures").

Every model here keeps the interface of the ResidualMLP (model.py), so the trainer, the local
losses and the diagnostics treat all of them alike:

    h_0 = embed(flatten_input(x));  f_l = blocks[l](h_l);  h_{l+1} = h_l + f_l (residual) or f_l
    logits = readout(h_L);          model(x, return_hidden=True) -> (logits, [h_0, ..., h_L])

with the ResidualMLP's attributes and `state_sizes` (per-sample sizes of h_0..h_L when not all d).
- ViT-Mini ("vit"): pre-LN transformer, h_l the (N, T, d) tokens between blocks; the projections
  into the stream start at N(0, 0.01^2), like the ResMLP's W2; readout: the cls token.
- Small CNN ("cnn"): conv blocks, h_l each conv's (and the FC's) output before its batch norm,
  flattened per sample; no LayerNorm, no residual add.
Not here: the ResidualMLP and its controls (model.py), the rules (rules.py).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import (LN_EPS, W2_INIT_STD, ResidualMLP, default_init, init_generator,
                    reset_stream, stream_forward)

TOKEN_INIT_STD = 0.02


def _image_shape(value, who: str) -> tuple[int, int, int]:
    shape = tuple(value) if isinstance(value, (tuple, list)) else None
    if shape is None or len(shape) != 3 or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape):
        raise ValueError(f"{who}: image_shape must be (C, H, W) of positive ints, got {value!r}")
    return shape


def _positive_int(who: str, name: str, value, lo: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{who}: {name} must be an int >= {lo}, got {value!r}")


class _ImageModel(nn.Module):
    """What ViT-Mini and the CNN share: the images they take and the rules' forward."""

    architecture = ""
    residual = True
    terminal_ln = True
    state_sizes: tuple[int, ...] | None = None

    def _set_image_shape(self, image_shape) -> None:
        self.image_shape = _image_shape(image_shape, type(self).__name__)
        self.input_dim = int(math.prod(self.image_shape))

    def flatten_input(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images, or (N, C*H*W) vectors of them, -> (N, C, H, W)."""
        c, hgt, wid = self.image_shape
        if tuple(x.shape[1:]) not in (self.image_shape, (self.input_dim,)):
            raise ValueError(
                f"{type(self).__name__} takes images of shape (N, {c}, {hgt}, {wid}) (or "
                f"(N, {self.input_dim}) vectors of them); got shape {tuple(x.shape)}. Build the "
                f"model with image_shape=(C, H, W) of your data.")
        return x.reshape(x.shape[0], c, hgt, wid)

    def forward(self, x: torch.Tensor, return_hidden: bool = False):
        return stream_forward(self, x, return_hidden)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Redraw every parameter with the module's init from `generator`."""
        reset_stream(self, generator)


# --- ViT-Mini -------------------------------------------------------------------------------------
class PatchEmbed(nn.Module):
    """(N, C, H, W) -> (N, T, d): non-overlapping p x p patches, one Linear, cls token first,
    learned position embeddings."""

    def __init__(self, image_shape: tuple[int, int, int], patch: int, d: int):
        super().__init__()
        c, hgt, wid = image_shape
        self.patch = patch
        self.num_patches = (hgt // patch) * (wid // patch)
        self.proj = nn.Linear(c * patch * patch, d)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.zeros(1, 1 + self.num_patches, d))

    def reset_parameters(self, generator: torch.Generator) -> None:
        default_init(self.proj, generator)
        with torch.no_grad():
            self.cls.normal_(0.0, TOKEN_INIT_STD, generator=generator)
            self.pos.normal_(0.0, TOKEN_INIT_STD, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, _, _ = x.shape
        p = self.patch
        patches = (x.unfold(2, p, p).unfold(3, p, p)          # (N, C, H/p, W/p, p, p)
                   .permute(0, 2, 3, 1, 4, 5).reshape(n, self.num_patches, c * p * p))
        tokens = self.proj(patches)
        return torch.cat([self.cls.expand(n, -1, -1), tokens], dim=1) + self.pos


class TransformerBranch(nn.Module):
    """One pre-LN transformer block's residual branch: a + m(h + a) (the model adds h)."""

    def __init__(self, d: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d, eps=LN_EPS)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d, eps=LN_EPS)
        self.fc1 = nn.Linear(d, mlp_ratio * d)
        self.fc2 = nn.Linear(mlp_ratio * d, d)

    def reset_parameters(self, generator: torch.Generator) -> None:
        self.ln1.reset_parameters()
        self.ln2.reset_parameters()
        default_init(self.qkv, generator)
        default_init(self.fc1, generator)
        with torch.no_grad():
            for layer in (self.proj, self.fc2):   # the two writes into the stream start small
                layer.weight.normal_(0.0, W2_INIT_STD, generator=generator)
                layer.bias.zero_()

    def attention(self, z: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(d_head)) v per head, written out: at a few dozen tokens torch's
        fused CPU kernel (scaled_dot_product_attention) made a ViT-Mini step 18% slower."""
        n, t, d = z.shape
        dh = d // self.heads
        q, k, v = self.qkv(z).reshape(n, t, 3, self.heads, dh).permute(2, 0, 3, 1, 4)
        w = torch.softmax((q * dh ** -0.5) @ k.transpose(-2, -1), dim=-1)   # (N, heads, T, T)
        return self.proj((w @ v).transpose(1, 2).reshape(n, t, d))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a = self.attention(self.ln1(h))
        m = self.fc2(F.gelu(self.fc1(self.ln2(h + a)), approximate="none"))
        return a + m


class ViTMini(_ImageModel):
    """ViT-Mini (see the module): pre-LN transformer, cls token, terminal LayerNorm.

    Args:
        image_shape: (C, H, W) of the inputs; H and W must be multiples of `patch_size`.
        d_hidden: token width d (the paper's ViT-Mini: 128).
        num_classes, num_blocks: logits and transformer blocks (the paper's: 10 and 4).
        patch_size: p (default 4: 64 patches + cls for 32x32 images).
        heads: attention heads (d must be a multiple).
        mlp_ratio: the MLP's hidden width in units of d.
        seed / generator: as ResidualMLP's.
    """

    architecture = "vit"
    residual = True
    terminal_ln = True

    def __init__(self, image_shape=(3, 32, 32), d_hidden: int = 128, num_classes: int = 10,
                 num_blocks: int = 4, *, patch_size: int = 4, heads: int = 4,
                 mlp_ratio: int = 2, seed: int | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        self._set_image_shape(image_shape)
        who = "ViTMini"
        for name, value in (("d_hidden", d_hidden), ("num_classes", num_classes),
                            ("patch_size", patch_size), ("heads", heads),
                            ("mlp_ratio", mlp_ratio)):
            _positive_int(who, name, value)
        _positive_int(who, "num_blocks", num_blocks, lo=0)
        c, hgt, wid = self.image_shape
        if hgt % patch_size or wid % patch_size:
            raise ValueError(f"ViTMini: patch_size {patch_size} does not divide the image size "
                             f"{hgt}x{wid}; choose a divisor (e.g. 4 for 32x32 images)")
        if d_hidden % heads:
            raise ValueError(f"ViTMini: d_hidden {d_hidden} is not a multiple of heads {heads}")
        self.d_hidden, self.num_classes, self.num_blocks = d_hidden, num_classes, num_blocks
        self.patch_size, self.heads, self.mlp_ratio = patch_size, heads, mlp_ratio
        self.embed = PatchEmbed(self.image_shape, patch_size, d_hidden)
        self.num_tokens = 1 + self.embed.num_patches
        self.blocks = nn.ModuleList(TransformerBranch(d_hidden, heads, mlp_ratio)
                                    for _ in range(num_blocks))
        self.out_ln = nn.LayerNorm(d_hidden, eps=LN_EPS)
        self.out_head = nn.Linear(d_hidden, num_classes)
        self.reset_parameters(init_generator(seed, generator))

    def extra_repr(self) -> str:
        return (f"tokens={self.num_tokens}, patch_size={self.patch_size}, heads={self.heads}, "
                f"mlp_ratio={self.mlp_ratio}")

    def readout(self, h_last: torch.Tensor) -> torch.Tensor:
        """The terminal stack: logits from the cls token of h_L through the terminal LayerNorm."""
        return self.out_head(self.out_ln(h_last[:, 0]))


# --- The small CNN --------------------------------------------------------------------------------
class ConvEmbed(nn.Module):
    """h_0 = conv_0(x), flattened per sample: (N, C, H, W) -> (N, C_0 H W)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)

    def reset_parameters(self, generator: torch.Generator) -> None:
        default_init(self.conv, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(1)


class NormPool(nn.Module):
    """pool(ReLU(BN(h))) of a flat state (N, C H W) -> (N, C, H/2, W/2): what each block reads."""

    def __init__(self, channels: int, hw: tuple[int, int]):
        super().__init__()
        self.channels, self.hw = channels, hw
        self.bn = nn.BatchNorm2d(channels)

    def reset_parameters(self) -> None:
        self.bn.reset_parameters()
        self.bn.reset_running_stats()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = h.reshape(h.shape[0], self.channels, *self.hw)
        return F.max_pool2d(F.relu(self.bn(x)), 2)


class ConvBlock(nn.Module):
    """h_{l+1} = conv_{l+1}(pool(ReLU(BN(h_l)))), flattened: a pre-norm conv block."""

    def __init__(self, c_in: int, c_out: int, hw: tuple[int, int]):
        super().__init__()
        self.norm = NormPool(c_in, hw)
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)

    def reset_parameters(self, generator: torch.Generator) -> None:
        self.norm.reset_parameters()
        default_init(self.conv, generator)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(h)).flatten(1)


class FCBlock(nn.Module):
    """h_L = W flatten(pool(ReLU(BN(h_{L-1})))) + b: the hidden fully connected layer."""

    def __init__(self, c_in: int, hw: tuple[int, int], d_out: int):
        super().__init__()
        self.norm = NormPool(c_in, hw)
        self.fc = nn.Linear(c_in * (hw[0] // 2) * (hw[1] // 2), d_out)

    def reset_parameters(self, generator: torch.Generator) -> None:
        self.norm.reset_parameters()
        default_init(self.fc, generator)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(h).flatten(1))


class SmallCNN(_ImageModel):
    """The small CNN (see the module): conv layers with batch norm, one hidden FC layer, a head.

    Args:
        image_shape: (C, H, W) of the inputs; H and W must halve `len(channels)` times.
        d_hidden: width of the hidden FC layer (h_L).
        num_classes: logits.
        channels: output channels of the conv layers (the paper's: 3 layers; default 32, 64,
            128). The embed is the first conv layer, the blocks the others and the FC layer, so
            num_blocks = len(channels).
        seed / generator: as ResidualMLP's.
    """

    architecture = "cnn"
    residual = False
    terminal_ln = False

    def __init__(self, image_shape=(3, 32, 32), d_hidden: int = 256, num_classes: int = 10, *,
                 channels: tuple[int, ...] = (32, 64, 128), seed: int | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        self._set_image_shape(image_shape)
        who = "SmallCNN"
        _positive_int(who, "d_hidden", d_hidden)
        _positive_int(who, "num_classes", num_classes)
        channels = tuple(channels) if isinstance(channels, (tuple, list)) else channels
        if not isinstance(channels, tuple) or not channels:
            raise ValueError(f"SmallCNN: channels must be a non-empty tuple of ints, got "
                             f"{channels!r}")
        for c in channels:
            _positive_int(who, "each of channels", c)
        c_in, hgt, wid = self.image_shape
        if hgt % 2 ** len(channels) or wid % 2 ** len(channels):
            raise ValueError(f"SmallCNN: {len(channels)} 2x2 poolings need H and W divisible by "
                             f"{2 ** len(channels)}; the images are {hgt}x{wid}")
        self.d_hidden, self.num_classes = d_hidden, num_classes
        self.channels = channels
        self.num_blocks = len(channels)
        self.embed = ConvEmbed(c_in, channels[0])
        sizes, blocks = [channels[0] * hgt * wid], []
        for c_prev, c_out in zip(channels, channels[1:]):
            blocks.append(ConvBlock(c_prev, c_out, (hgt, wid)))
            hgt, wid = hgt // 2, wid // 2
            sizes.append(c_out * hgt * wid)
        blocks.append(FCBlock(channels[-1], (hgt, wid), d_hidden))
        self.blocks = nn.ModuleList(blocks)
        self.state_sizes = (*sizes, d_hidden)
        self.out_ln = nn.Identity()
        self.out_head = nn.Linear(d_hidden, num_classes)
        self.reset_parameters(init_generator(seed, generator))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, state_sizes={self.state_sizes}"

    def readout(self, h_last: torch.Tensor) -> torch.Tensor:
        """The head on ReLU(h_L): no normalisation between the last state and the logits."""
        return self.out_head(F.relu(h_last))


# --- Building one from a training config ----------------------------------------------------------
@dataclass(frozen=True)
class ResMLPOptions:
    """The ResidualMLP has no options beyond TrainConfig's own (d_hidden, num_blocks,
    terminal_ln, residual)."""


@dataclass(frozen=True)
class ViTOptions:
    patch_size: int = 4
    heads: int = 4
    mlp_ratio: int = 2

    def __post_init__(self):
        for name in ("patch_size", "heads", "mlp_ratio"):
            _positive_int("ViT option", name, getattr(self, name))


@dataclass(frozen=True)
class CNNOptions:
    channels: tuple[int, ...] = (32, 64, 128)

    def __post_init__(self):
        if not isinstance(self.channels, (tuple, list)) or not self.channels:
            raise ValueError(f"CNN option channels must be a non-empty list of ints, got "
                             f"{self.channels!r}")
        for c in self.channels:
            _positive_int("CNN option", "each of channels", c)
        object.__setattr__(self, "channels", tuple(self.channels))


ARCHITECTURE_LABELS = {"resmlp": "ResMLP", "vit": "ViT-Mini", "cnn": "CNN"}

ARCHITECTURES: dict[str, tuple[type[nn.Module], type]] = {
    "resmlp": (ResidualMLP, ResMLPOptions),
    "vit": (ViTMini, ViTOptions),
    "cnn": (SmallCNN, CNNOptions),
}


def architecture_of(model: nn.Module) -> str:
    """The architecture name of a model built here ("resmlp" for the ResidualMLP and any model
    that does not say)."""
    return getattr(model, "architecture", "resmlp") or "resmlp"


def parse_architecture(name: str, options: dict | None) -> Any:
    """Validate an architecture name and its options dict; returns the options dataclass."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of: "
                         f"{', '.join(ARCHITECTURES)}")
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"architecture_options must be a dict, got {options!r}")
    cls = ARCHITECTURES[name][1]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options or {}) - fields)
    if unknown:
        raise ValueError(f"architecture {name!r} has no option(s) {', '.join(map(repr, unknown))}"
                         f"; valid options: {', '.join(sorted(fields)) or 'none'}")
    return cls(**(options or {}))


def check_architecture(name: str, options: dict | None, *, d_hidden: int, num_blocks: int,
                       terminal_ln: bool = True, residual: bool = True) -> Any:
    """Everything about an architecture that can be checked before the data are loaded (a
    control it does not have, ViT-Mini's heads, the CNN's depth); returns its options."""
    opts = parse_architecture(name, options)
    if name != "resmlp" and not (terminal_ln and residual):
        raise ValueError(f"terminal_ln=False / residual=False are controls of the ResidualMLP; "
                         f"architecture {name!r} has one form (leave both True)")
    if name == "vit" and d_hidden % opts.heads:
        raise ValueError(f"d_hidden {d_hidden} must be a multiple of ViT-Mini's heads "
                         f"({opts.heads})")
    if name == "cnn" and num_blocks != len(opts.channels):
        raise ValueError(f"num_blocks must be {len(opts.channels)} for the CNN: its depth is set "
                         f"by its channels {opts.channels} (the conv layers after the first, "
                         f"plus the FC layer); got {num_blocks}")
    return opts


def build_architecture(name: str, options: dict | None, *, sample_shape: tuple[int, ...],
                       d_hidden: int, num_classes: int, num_blocks: int,
                       terminal_ln: bool = True, residual: bool = True,
                       generator: torch.Generator | None = None) -> nn.Module:
    """The model `name` for samples of `sample_shape` (the data's per-sample shape), after
    `check_architecture`."""
    opts = check_architecture(name, options, d_hidden=d_hidden, num_blocks=num_blocks,
                              terminal_ln=terminal_ln, residual=residual)
    sample_shape = tuple(sample_shape)
    if name == "resmlp":
        return ResidualMLP(int(math.prod(sample_shape)), d_hidden, num_classes, num_blocks,
                           terminal_ln=terminal_ln, residual=residual, generator=generator)
    if len(sample_shape) != 3:
        raise ValueError(f"architecture {name!r} needs (N, C, H, W) images; the data's samples "
                         f"have shape {sample_shape}")
    if name == "vit":
        return ViTMini(sample_shape, d_hidden, num_classes, num_blocks,
                       **dataclasses.asdict(opts), generator=generator)
    return SmallCNN(sample_shape, d_hidden, num_classes, channels=opts.channels,
                    generator=generator)
