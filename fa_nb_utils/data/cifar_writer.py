"""Writing CIFAR-10's own on-disk format (`cifar-10-batches-py`): Python-2-style protocol-2
pickles, byte for byte what the original archive holds, and the archive itself.

The synthetic data set is written with it (`synthetic.py`), so that the real reading code in
`cifar.py` is what the tests and the smoke profile exercise. Every file, the archive included, is
written atomically by `io.write_bytes_atomic`, with the umask's mode like any other output.
Not here: reading the format (cifar.py).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import tarfile
from io import BytesIO
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from . import cifar
from ..io import write_bytes_atomic
from .cifar import (DataNotFoundError, DATA_FILES, FOLDER_NAME, IMAGE_SHAPE, MANIFEST_FORMAT, MANIFEST_NAME,
                    MAX_BINSTRING, META_FILE, NUM_VIS, TEST_FILE, TRAIN_FILES, md5_of_file)

# What an OutputPathError tells the user to do when a data folder or archive cannot be written.
_WRITE_FIX = (f"write the data to another folder (--data-root, or the {cifar.DATA_ENV_VAR} "
              "environment variable)")


# --- writing (the synthetic dataset uses this) ----------------------------------------------------
# The batches are written opcode by opcode, mirroring what Python 2 wrote for the real dataset
# (protocol 2, byte strings for keys and names, the pixel data as one BINSTRING, numpy.core names).
# So the files are byte-identical for identical inputs whatever the numpy or Python version,
# load with bytes keys under encoding="bytes" exactly as the real files do (str keys under
# torchvision's encoding="latin1"), and store pixels as raw bytes (pickle.dumps would write them
# as UTF-8 text, up to twice the size).
class _Py2PickleWriter:
    def __init__(self) -> None:
        self.parts: list[bytes] = [b"\x80\x02"]  # PROTO 2

    def int(self, v: int) -> None:
        v = int(v)
        if 0 <= v < 256:
            self.parts.append(b"K" + bytes([v]))  # BININT1
        elif 0 <= v < 65536:
            self.parts.append(b"M" + struct.pack("<H", v))  # BININT2
        elif -(1 << 31) <= v < (1 << 31):
            self.parts.append(b"J" + struct.pack("<i", v))  # BININT
        else:
            raise ValueError(f"integer {v} does not fit a CIFAR batch (32-bit)")

    def bytestr(self, b: bytes) -> None:  # a Python-2 str
        if len(b) < 256:
            self.parts.append(b"U" + bytes([len(b)]) + b)  # SHORT_BINSTRING
        elif len(b) <= MAX_BINSTRING:
            self.parts += [b"T" + struct.pack("<i", len(b)), b]  # BINSTRING
        else:
            raise ValueError(f"a string of {len(b)} bytes does not fit a protocol-2 pickle (max 2 GiB)")

    def text(self, s: str) -> None:
        self.bytestr(s.encode("ascii"))

    def op(self, code: bytes) -> None:
        self.parts.append(code)

    def global_(self, module: str, name: str) -> None:
        self.parts.append(b"c" + f"{module}\n{name}\n".encode("ascii"))  # GLOBAL

    def uint8_matrix(self, a: np.ndarray) -> None:
        """`_reconstruct(ndarray, (0,), 'b')` then BUILD with (1, shape, dtype('u1'), False, bytes)."""
        self.global_("numpy.core.multiarray", "_reconstruct")
        self.global_("numpy", "ndarray")
        self.int(0)
        self.op(b"\x85")  # TUPLE1
        self.bytestr(b"b")
        self.op(b"\x87R")  # TUPLE3, REDUCE
        self.op(b"(")  # MARK
        self.int(1)
        for dim in a.shape:
            self.int(dim)
        self.op(b"\x86")  # TUPLE2: the shape
        self.global_("numpy", "dtype")
        self.text("u1")
        self.op(b"\x89\x88\x87R")  # False, True, TUPLE3, REDUCE: dtype('u1', False, True)
        self.op(b"(")  # MARK: dtype state (version 3, byte order '|', no fields, no metadata)
        self.int(3)
        self.text("|")
        self.op(b"NNN")
        self.int(-1)
        self.int(-1)
        self.int(0)
        self.op(b"tb")  # TUPLE, BUILD
        self.op(b"\x89")  # not Fortran order
        self.bytestr(np.ascontiguousarray(a).tobytes())
        self.op(b"tb")  # TUPLE, BUILD

    def dict_(self, items: Sequence[tuple[str, Any]]) -> None:
        self.op(b"}(")  # EMPTY_DICT, MARK
        for key, value in items:
            self.text(key)
            self.value(value)
        self.op(b"u")  # SETITEMS

    def value(self, v: Any) -> None:
        if isinstance(v, np.ndarray):
            self.uint8_matrix(v)
        elif isinstance(v, str):
            self.text(v)
        elif isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            self.int(v)
        elif isinstance(v, list):
            self.op(b"](")  # EMPTY_LIST, MARK
            for item in v:
                self.value(item)
            self.op(b"e")  # APPENDS
        else:
            raise TypeError(f"cannot write {type(v).__name__} into a CIFAR batch")

    def getvalue(self) -> bytes:
        return b"".join(self.parts) + b"."  # STOP


def _pickle_dict(items: Sequence[tuple[str, Any]]) -> bytes:
    w = _Py2PickleWriter()
    w.dict_(items)
    return w.getvalue()


def _check_images(x: Any, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 4 and x.shape[1:] == (32, 32, 3):
        raise ValueError(f"{name} has shape {x.shape}, channel-last; CIFAR stores (N, 3, 32, 32): "
                         f"pass {name}.transpose(0, 3, 1, 2).")
    if x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, 3, 32, 32) with N >= 1, got {x.shape}.")
    if x.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 raw pixels 0..255, got {x.dtype}: convert with "
                         f"np.clip(np.rint({name}), 0, 255).astype(np.uint8) (scale [0, 1] floats "
                         "by 255 first).")
    return x


def _check_labels(y: Any, n: int, num_classes: int, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match its images, got {y.shape}.")
    if y.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer class indices, got dtype {y.dtype}.")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"{name} spans {y.min()}..{y.max()} but there are {num_classes} label_names: "
                         f"labels must lie in 0..{num_classes - 1}.")
    return y.astype(np.int64)


def write_cifar10_folder(folder: str | os.PathLike, train_x: Any, train_y: Any, test_x: Any, test_y: Any,
                         label_names: Iterable[str], metadata: dict) -> Path:
    """Write arrays in CIFAR-10's python-batch format, plus `fa_eval_manifest.json`; returns `folder`.

    `train_x`/`test_x`: uint8 (N, 3, 32, 32); `train_y`/`test_y`: ints in 0..len(label_names)-1;
    N_train must be divisible by 5 (five equal train batches, as in CIFAR-10). `metadata` (JSON)
    is stored in the manifest and comes back as `CifarArrays.synthetic`. Each file is written
    atomically and the manifest last; identical inputs give byte-identical files. Refuses to
    overwrite files of the real dataset (recognised by their official md5s).
    """
    folder = Path(folder).expanduser()
    label_names = tuple(label_names)
    if not label_names or not all(isinstance(s, str) and s.isascii() and s for s in label_names):
        raise ValueError(f"label_names must be non-empty ASCII strings (CIFAR stores them as Python-2 "
                         f"byte strings), got {label_names!r}.")
    train_x, test_x = _check_images(train_x, "train_x"), _check_images(test_x, "test_x")
    train_y = _check_labels(train_y, len(train_x), len(label_names), "train_y")
    test_y = _check_labels(test_y, len(test_x), len(label_names), "test_y")
    n_batches = len(TRAIN_FILES)
    if len(train_x) % n_batches:
        raise ValueError(f"train_x has {len(train_x)} images; CIFAR-10 splits the train set into "
                         f"{n_batches} equal batches, so N_train must be divisible by {n_batches} "
                         f"(drop {len(train_x) % n_batches} images or add more).")
    per_batch = len(train_x) // n_batches
    if max(per_batch, len(test_x)) * NUM_VIS > MAX_BINSTRING:
        raise ValueError(f"a batch of more than {MAX_BINSTRING // NUM_VIS} images does not fit the "
                         "protocol-2 pickle format; use fewer images.")
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}.")
    try:
        json.dumps(metadata, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"metadata must be JSON-serialisable (plain dicts, lists, str, int, finite "
                         f"float, bool, None) because it goes into {MANIFEST_NAME}: {e}") from e

    if not (folder / MANIFEST_NAME).exists():
        # Without a manifest the folder is either a write of ours interrupted before the manifest
        # (overwrite it) or the real dataset (never overwrite it): the official md5s tell which.
        real = [n for n in DATA_FILES
                if (folder / n).is_file() and md5_of_file(folder / n) == cifar.OFFICIAL_MD5[n]]
        if real:
            raise FileExistsError(f"{folder} holds the real CIFAR-10 dataset ({', '.join(real)} match the "
                                  "official md5s); refusing to overwrite it with other data. "
                                  "Write to another folder.")
    folder.mkdir(parents=True, exist_ok=True)

    def batch(label: str, x: np.ndarray, y: np.ndarray, start: int) -> bytes:
        filenames = [f"{label_names[c]}_s_{start + i:06d}.png" for i, c in enumerate(y.tolist())]
        return _pickle_dict([
            ("batch_label", label),
            ("labels", [int(c) for c in y.tolist()]),
            ("data", x.reshape(len(x), NUM_VIS)),
            ("filenames", filenames),
        ])

    files: dict[str, bytes] = {}
    for i, name in enumerate(TRAIN_FILES):
        sl = slice(i * per_batch, (i + 1) * per_batch)
        files[name] = batch(f"training batch {i + 1} of {n_batches}", train_x[sl], train_y[sl], sl.start)
    files[TEST_FILE] = batch("testing batch 1 of 1", test_x, test_y, 0)
    files[META_FILE] = _pickle_dict([
        ("label_names", list(label_names)),
        ("num_cases_per_batch", per_batch),
        ("num_vis", NUM_VIS),
    ])
    md5s = {}
    for name, data in files.items():
        write_bytes_atomic(folder / name, data, fix=_WRITE_FIX)
        md5s[name] = hashlib.md5(data).hexdigest()
    manifest = {"format": MANIFEST_FORMAT, "files": md5s, "metadata": metadata,
                "num_train": len(train_x), "num_test": len(test_x)}
    manifest_text = json.dumps(manifest, sort_keys=True, indent=2, allow_nan=False) + "\n"
    write_bytes_atomic(folder / MANIFEST_NAME, manifest_text.encode("utf-8"), fix=_WRITE_FIX)
    return folder


def write_cifar10_archive(folder: str | os.PathLike, archive_path: str | os.PathLike) -> str:
    """Pack a batches folder into a deterministic `.tar.gz` laid out like the official archive.

    Sorted members with mtime 0 and no owners, so identical folders give byte-identical
    archives (for one zlib version); built in memory, written atomically. Returns its md5, which
    `load_cifar10(..., archive_md5=...)` accepts.
    """
    folder, archive_path = Path(folder).expanduser(), Path(archive_path).expanduser()
    missing = [n for n in DATA_FILES if not (folder / n).is_file()]
    if missing:
        raise DataNotFoundError(f"cannot archive {folder}: missing {', '.join(missing)}.")
    names = sorted(DATA_FILES + ((MANIFEST_NAME,) if (folder / MANIFEST_NAME).is_file() else ()))

    def info(name: str, size: int | None) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = 0, 0, 0, "", ""
        if size is None:
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
        else:
            ti.size, ti.mode = size, 0o644
        return ti

    raw = BytesIO()
    # compresslevel 6: CIFAR-like pixels barely compress, and 9 only costs time.
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            tar.addfile(info(FOLDER_NAME, None))
            for name in names:
                path = folder / name
                with open(path, "rb") as f:
                    tar.addfile(info(f"{FOLDER_NAME}/{name}", path.stat().st_size), f)
    archive = raw.getvalue()
    write_bytes_atomic(archive_path, archive, fix=_WRITE_FIX)
    return hashlib.md5(archive).hexdigest()
