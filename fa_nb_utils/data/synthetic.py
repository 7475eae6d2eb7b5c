"""Offline stand-in for CIFAR-10, written in CIFAR-10's own on-disk format.

Each image is a smooth, colour-correlated random background (roughly 1/f) plus K hidden binary
*factors*, each adding +-alpha times a fixed low-frequency template that survives the crop and
flip augmentation. The class is a fixed random lookup table over the 2^K sign patterns (so the
label depends on interactions between factors), classes are exactly balanced, and a share
`label_noise` of images is drawn for a random class, which keeps BP on a plateau short of 100%.
Pixels are scaled to CIFAR-10's per-channel mean and std. Why it looks like this:
docs/protocol.md ("The synthetic data set's design"); what it does under training:
docs/measurements.md, asserted by tests/test_synthetic.py.
Not here: reading the format (cifar.py), writing it (cifar_writer.py), training (trainer.py).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..io import ensure_writable_dir
from .cifar import DATA_ENV_VAR

IMG = 32
N_TEMPLATES = 21
CIFAR_MEAN_255 = (125.3, 123.0, 113.9)  # CIFAR-10's per-channel pixel mean, in 0..255
CIFAR_STD_255 = (63.0, 62.1, 66.8)      # and standard deviation
LABEL_NAMES = tuple(f"class_{i}" for i in range(10))
GENERATOR_VERSION = 1  # bump when the generator's output changes: cached folders are keyed on it
JITTER = 0.25          # per-image relative jitter of the factor strength
CONTRAST_SIGMA = 0.3   # log-normal per-image contrast
CLIP_GAIN = 1.12       # pre-clip gain (see generate_arrays)


@dataclass(frozen=True)
class SyntheticSpec:
    """The knobs of the generator; `amplitude`, `label_noise` and `n_factors` set the difficulty."""

    n_factors: int = 6            # K: hidden binary factors; the lookup table has 2^K cells
    amplitude: float = 0.5        # factor strength, in units of the background's per-pixel std
    label_noise: float = 0.4      # share of images drawn for a random class (label kept)
    proto_amplitude: float = 0.2  # class-prototype strength (the linearly readable signal)
    num_classes: int = 10
    seed: int = 0                 # the data seed (independent of the run seeds)


# "standard": BP learns it but plateaus (label noise caps any classifier at 1 - 0.4 * 0.9 = 0.64),
# DFA's stream explodes as on CIFAR-10. "easy": 4 strong factors, no label noise; BP fits it.
# Their measured accuracies and firing epochs: docs/measurements.md.
PRESETS: dict[str, SyntheticSpec] = {
    "standard": SyntheticSpec(),
    "easy": SyntheticSpec(n_factors=4, amplitude=1.2, label_noise=0.0),
}


def _upsample_matrix(s: int, n: int = IMG) -> np.ndarray:
    """(n, s) linear-interpolation matrix from an s-point grid to n points (edge-clamped)."""
    pos = (np.arange(n) + 0.5) * s / n - 0.5
    lo = np.clip(np.floor(pos).astype(int), 0, s - 1)
    hi = np.clip(lo + 1, 0, s - 1)
    w = np.clip(pos - lo, 0.0, 1.0)
    m = np.zeros((n, s))
    m[np.arange(n), lo] += 1 - w
    m[np.arange(n), hi] += w
    return m


# Colour directions: luminance and two opponent axes (unit vectors over RGB).
COLOURS = np.array([[1, 1, 1], [1, 0, -1], [1, -2, 1]], dtype=np.float64)
COLOURS /= np.linalg.norm(COLOURS, axis=1, keepdims=True)


def templates(count: int) -> np.ndarray:
    """(count, 3, 32, 32) unit-RMS templates: smooth, flip-symmetric, mutually orthogonal.

    Each is a colour direction times a vertical cosine profile times a horizontal profile even
    about the centre column; the lowest frequency is half a period over the image, so a 4-px
    shift keeps most of the projection.
    """
    y = (np.arange(IMG) + 0.5) / IMG
    x = (np.arange(IMG) + 0.5) / IMG
    vert = [np.cos(np.pi * y), np.cos(2 * np.pi * y), np.ones(IMG), np.cos(3 * np.pi * y)]
    horiz = [np.ones(IMG), np.cos(2 * np.pi * (x - 0.5))]
    shapes = [(0, 0), (1, 0), (2, 1), (0, 1), (1, 1), (3, 0), (3, 1)]
    bank = [COLOURS[colour][:, None, None] * np.outer(vert[vi], horiz[hi])[None]
            for vi, hi in shapes for colour in range(3)]   # shapes outermost: mix colours early
    if not 1 <= count <= len(bank):
        raise ValueError(f"at most {len(bank)} templates exist, asked for {count}")
    t = np.stack(bank[:count])
    return t / np.sqrt((t ** 2).mean(axis=(1, 2, 3), keepdims=True))


def prototypes(spec: "SyntheticSpec") -> np.ndarray:
    """(C, 3, 32, 32) unit-RMS class prototypes in the templates the factors do not use: a
    consistent mean image per class, as real photos have, which a frozen-blocks net can use too.
    """
    bank = templates(N_TEMPLATES)[spec.n_factors:]
    rng = np.random.default_rng([spec.seed, 3])
    mix = rng.standard_normal((spec.num_classes, len(bank)))
    p = np.einsum("cj,jkyx->ckyx", mix, bank)
    return p / np.sqrt((p ** 2).mean(axis=(1, 2, 3), keepdims=True))


def lookup_table(spec: SyntheticSpec) -> np.ndarray:
    """cell -> class for the 2^K sign patterns; every class gets floor or ceil of 2^K / C cells."""
    cells = 2 ** spec.n_factors
    if cells < spec.num_classes:
        raise ValueError(f"2^n_factors = {cells} cells cannot cover {spec.num_classes} classes")
    rng = np.random.default_rng([spec.seed, 1])
    table = np.arange(cells) % spec.num_classes
    return rng.permutation(table)


def background(rng: np.random.Generator, n: int) -> np.ndarray:
    """Smooth colour-correlated noise, about 1/f: octaves 4, 8, 16, 32 px with falling weight."""
    img = np.zeros((n, 3, IMG, IMG))
    for s, weight in ((4, 1.0), (8, 0.6), (16, 0.35), (32, 0.2)):
        u = _upsample_matrix(s)
        z = rng.standard_normal((n, 3, s, s))
        img += weight * np.einsum("ys,ncst,xt->ncyx", u, z, u, optimize=True)
    # correlate the channels the way natural images are (mostly luminance)
    mix = np.array([[1.0, 0.25, 0.1], [1.0, 0.0, 0.0], [1.0, -0.2, 0.15]])
    img = np.einsum("dc,ncyx->ndyx", mix, img)
    return img / img.std()


def generate_arrays(spec: SyntheticSpec, n: int, split_seed: int, return_factors: bool = False,
                    extra=None):
    """n images (uint8, (n, 3, 32, 32)) and exactly balanced labels for one split.

    With `return_factors`, also the (n, K) factor signs the images were drawn with. `extra(source)
    -> (components, variance)`: more class-conditional components, added before the
    renormalisation (benchmarks/embed_growth_probe.py's variants).
    """
    if n % spec.num_classes:
        raise ValueError(f"split size {n} must be a multiple of num_classes={spec.num_classes} "
                         "so the classes are exactly balanced")
    rng = np.random.default_rng([spec.seed, 2, split_seed])
    table = lookup_table(spec)
    labels = rng.permutation(np.repeat(np.arange(spec.num_classes), n // spec.num_classes))
    cells_of = [np.flatnonzero(table == c) for c in range(spec.num_classes)]
    # label noise: a share of images is drawn for a random class, keeping its given label
    source = labels.copy()
    noisy = rng.random(n) < spec.label_noise
    source[noisy] = rng.integers(0, spec.num_classes, noisy.sum())
    cell = np.array([rng.choice(cells_of[c]) for c in source])
    bits = ((cell[:, None] >> np.arange(spec.n_factors)) & 1) * 2.0 - 1.0   # (n, K) in {-1, +1}
    strength = spec.amplitude * (1.0 + JITTER * rng.standard_normal((n, 1)))  # per-image jitter
    images = background(rng, n) + np.einsum("nk,kcyx->ncyx", bits * strength,
                                             templates(spec.n_factors))
    images += spec.proto_amplitude * prototypes(spec)[source]
    # back to unit per-pixel variance: background 1, K orthogonal unit-RMS templates, prototype
    var = (1.0 + spec.n_factors * spec.amplitude ** 2 * (1.0 + JITTER ** 2)
           + spec.proto_amplitude ** 2)
    if extra is not None:
        more, more_var = extra(source)
        images += more
        var += more_var
    images /= np.sqrt(var)
    # per-image contrast, as in natural photos (it makes the median ||h_0|| sit below the RMS one)
    contrast = np.exp(CONTRAST_SIGMA * rng.standard_normal((n, 1, 1, 1)))
    images *= contrast / np.sqrt(np.exp(2 * CONTRAST_SIGMA ** 2))
    mean = np.array(CIFAR_MEAN_255)[None, :, None, None]
    std = np.array(CIFAR_STD_255)[None, :, None, None]
    # CLIP_GAIN: calibrated so that the std after clipping to 0..255 matches CIFAR-10's
    pixels = np.clip(np.rint(mean + CLIP_GAIN * std * images), 0, 255).astype(np.uint8)
    if return_factors:
        return pixels, labels.astype(np.int64), bits
    return pixels, labels.astype(np.int64)


def spec_key(spec: SyntheticSpec) -> str:
    """8 hex of a hash of the generator version and every knob: a changed preset gets a new folder."""
    blob = json.dumps({"version": GENERATOR_VERSION, **asdict(spec)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def folder_for(root: Path, preset: str, n_train: int, n_test: int) -> Path:
    spec = PRESETS[preset]
    name = f"synthetic-{preset}-{spec_key(spec)}-n{n_train}-t{n_test}"
    return Path(root) / name / "cifar-10-batches-py"


def ensure_synthetic(root: Path, preset: str = "standard", n_train: int = 10_000,
                     n_test: int = 2_000) -> Path:
    """The synthetic set's CIFAR-format folder under `root`, generated on first use (an
    unwritable folder raises OutputPathError before anything is generated)."""
    from .cifar_writer import write_cifar10_folder

    if preset not in PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}; choose from {', '.join(PRESETS)}")
    if n_test < 1280:
        raise ValueError(f"synthetic n_test must be >= 1280 (the protocol's 10 x 128 eval "
                         f"batches), got {n_test}")
    if n_train % 50:
        raise ValueError(f"synthetic n_train must be a multiple of 50 (5 CIFAR batches x 10 "
                         f"balanced classes), got {n_train}")
    folder = folder_for(root, preset, n_train, n_test)
    spec = PRESETS[preset]
    manifest = folder / "fa_eval_manifest.json"
    if manifest.exists():
        meta = json.loads(manifest.read_text()).get("metadata", {})
        if meta.get("spec") == asdict(spec) and meta.get("generator_version") == GENERATOR_VERSION:
            return folder
        # same name, other contents (edited by hand?): regenerate rather than reuse stale data
    ensure_writable_dir(folder, fix=f"the synthetic data are generated there on first use: pass "
                        f"--data-root a folder you can write to, or set {DATA_ENV_VAR} "
                        "(TrainConfig.data_root in Python)")
    train_x, train_y = generate_arrays(spec, n_train, split_seed=0)
    test_x, test_y = generate_arrays(spec, n_test, split_seed=1)
    meta = {"generator": "fa_nb_utils.data.synthetic", "generator_version": GENERATOR_VERSION,
            "preset": preset, "spec": asdict(spec), "n_train": n_train, "n_test": n_test}
    write_cifar10_folder(folder, train_x, train_y, test_x, test_y, LABEL_NAMES, meta)
    return folder
