"""Named random streams: one `torch.Generator` per (seed, purpose).

Every source of randomness in a run (model init, data order, augmentation, feedback matrices, ...)
draws from its own generator, seeded from the run seed and a purpose string. Adding a rule that
needs a new stream therefore never shifts another rule's initial weights or data order. Nothing
here touches torch's global RNG.
"""
from __future__ import annotations

import hashlib

import torch

def derive_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed that depends on both `seed` and `purpose` (stable across runs and platforms)."""
    digest = hashlib.sha256(f"{int(seed)}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def make_generator(seed: int, purpose: str, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator on `device` seeded from (seed, purpose)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, purpose))
    return gen
