"""CIFAR-10's on-disk format: reading, verifying and downloading the python batches.

`load_cifar10` finds the extracted `cifar-10-batches-py/` folder, else extracts the archive, else
downloads it (md5-checked, atomic). Every file's md5 is checked (against the official ones, or a
folder's own `fa_eval_manifest.json` when this project wrote it) before it is unpickled with a
*restricted* unpickler: the batches are pickles, and a tampered one could otherwise run code.
A batch is a pickled dict: `data`, an (n, 3072) uint8 array (three row-major 32 x 32 planes, red,
green, blue) and `labels`, ints in 0..9. Never imports torch.
Not here: writing the format (cifar_writer.py), tensors and augmentation (device.py), the
synthetic generator (synthetic.py).
"""
from __future__ import annotations

import hashlib
import http.client
import importlib
import io
import json
import os
import pickle
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io import create_temp, project_root

# Per-channel statistics of the CIFAR-10 train split, on pixels scaled to [0, 1]: the paper's
# normalisation, also the target statistics of the synthetic data.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

ARCHIVE_NAME = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
FOLDER_NAME = "cifar-10-batches-py"
TRAIN_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
DATA_FILES = TRAIN_FILES + (TEST_FILE, META_FILE)
MANIFEST_NAME = "fa_eval_manifest.json"
MANIFEST_FORMAT = "fa-eval cifar-10-batches-py v1"

# md5s of the files in the official archive, once extracted.
OFFICIAL_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}

DATA_ENV_VAR = "FA_EVAL_DATA"

IMAGE_SHAPE = (3, 32, 32)
NUM_VIS = 3 * 32 * 32  # values per image in a batch row: 1024 R, 1024 G, 1024 B
_CHUNK = 1 << 20  # bytes per read when hashing or downloading (1 MiB)
_DOWNLOAD_TIMEOUT_S = 30.0  # per blocking socket operation, not for the whole download
MAX_BINSTRING = (1 << 31) - 1  # a Python-2 BINSTRING's length is a signed 32-bit int


class DataNotFoundError(FileNotFoundError):
    """The dataset is not on disk (or not complete) and could not be fetched."""


class DataIntegrityError(ValueError):
    """A file exists but is not what it should be: wrong md5, truncated, or malformed contents."""


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for something a CIFAR-10 batch never contains; nothing from it was run."""


# --- where the data lives -------------------------------------------------------------------------
def default_data_root() -> Path:
    """`$FA_EVAL_DATA` if set, else `<project root>/data` (the nearest parent holding a
    `pyproject.toml`: an editable install's checkout), else `./data`."""
    env = os.environ.get(DATA_ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    return (project_root() or Path.cwd()) / "data"


def _not_found_message(root: Path, reason: str | None = None) -> str:
    lead = f"CIFAR-10 was not found under {root}"
    if reason:
        lead += f" and could not be downloaded: {reason}"
    return (
        f"{lead}.\n"
        "The machine seems to be offline (or the download is blocked). To fix it, either:\n"
        f"  - put the data there by hand: the extracted folder {root / FOLDER_NAME}/ (holding\n"
        f"    {', '.join(DATA_FILES)}) or the archive {root / ARCHIVE_NAME}\n"
        f"    (from {ARCHIVE_URL}, md5 {ARCHIVE_MD5});\n"
        f"  - or point the environment variable {DATA_ENV_VAR} at the folder that holds them;\n"
        "  - or run offline on the synthetic dataset with `--data synthetic`."
    )


# --- the arrays -----------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False, repr=False)
class CifarArrays:
    """One CIFAR-format dataset in memory, exactly as stored on disk (no normalisation).

    `fingerprint`: sha256 of the data files' sorted "name md5" lines (a cache key). `synthetic`:
    the manifest's generator metadata for a folder this project wrote, None for the real dataset.
    """

    train_x: np.ndarray  # uint8 (N_train, 3, 32, 32), raw pixels 0..255
    train_y: np.ndarray  # int64 (N_train,)
    test_x: np.ndarray  # uint8 (N_test, 3, 32, 32)
    test_y: np.ndarray  # int64 (N_test,)
    label_names: tuple[str, ...]
    folder: Path
    fingerprint: str
    synthetic: dict | None = field(default=None)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def __repr__(self) -> str:
        kind = "synthetic" if self.synthetic is not None else "real"
        return (
            f"CifarArrays({kind}, train={len(self.train_y)}, test={len(self.test_y)}, "
            f"classes={self.num_classes}, folder={str(self.folder)!r}, "
            f"fingerprint={self.fingerprint[:12]}...)"
        )


def data_fingerprint(md5s: dict[str, str]) -> str:
    """sha256 hex over the sorted (filename, md5) pairs, one "name md5" line each."""
    lines = "".join(f"{name} {md5s[name]}\n" for name in sorted(md5s))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def md5_of_file(path: str | os.PathLike) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


# --- restricted unpickling ------------------------------------------------------------------------
def _numpy_multiarray():
    # numpy 2 moved numpy.core to numpy._core (numpy.core still imports, with a warning); numpy
    # >= 1.26 also has numpy._core. Real batches name numpy.core, numpy-2 pickles numpy._core.
    try:
        return importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy < 1.26
        return importlib.import_module("numpy.core.multiarray")


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """`_codecs.encode` as protocol-2 pickles of bytes from Python 3 use it, latin-1 only."""
    if encoding.replace("_", "-").lower() not in ("latin1", "latin-1", "iso-8859-1"):
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r}: "
                                "a CIFAR-10 batch only ever encodes bytes as latin-1")
    return obj.encode("latin-1", errors)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    ma = _numpy_multiarray()
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = ma._reconstruct
        allowed[(module, "scalar")] = ma.scalar
    # Constructors that cannot run code; Python 2 pickles name the module __builtin__ (the C
    # unpickler's fix_imports mapping is bypassed once find_class is overridden).
    for name, obj in (("bytes", bytes), ("bytearray", bytearray), ("set", set),
                      ("frozenset", frozenset), ("complex", complex)):
        allowed[("builtins", name)] = obj
        allowed[("__builtin__", name)] = obj
    return allowed


class CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10 python batches and nothing else: `find_class` allows numpy's array
    reconstruction and a few code-free globals; any other (`os.system`, ...) raises
    `UnsafePickleError` before anything is called.
    """

    def __init__(self, file, *, source: str = "<pickle>"):
        super().__init__(file, encoding="bytes")
        self.source = source
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source} is not a CIFAR-10 batch: it asks for {module}.{name}, which CIFAR "
                "batches never contain, and unpickling it could run arbitrary code, so it was refused "
                "(nothing from it was run). Delete the file and re-download or regenerate the data."
            ) from None


def safe_unpickle(raw: bytes, source: str = "<bytes>") -> Any:
    """Load one CIFAR batch pickle from `raw` with `CifarUnpickler` (bytes keys stay bytes)."""
    return CifarUnpickler(io.BytesIO(raw), source=source).load()


# --- reading --------------------------------------------------------------------------------------
def _str_keys(obj: Any, path: Path) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DataIntegrityError(f"{path} is not a CIFAR-10 batch: it holds a {type(obj).__name__}, "
                                 "not a dict. Delete the folder and re-download or regenerate it.")
    out = {}
    for k, v in obj.items():
        if isinstance(k, bytes):
            k = k.decode("latin-1")
        if not isinstance(k, str):
            raise DataIntegrityError(f"{path} is not a CIFAR-10 batch: it has a non-string key {k!r}.")
        out[k] = v
    return out


def _as_text(s: Any) -> str:
    return s.decode("utf-8") if isinstance(s, bytes) else str(s)


def _malformed(path: Path, problem: str, fix: str) -> DataIntegrityError:
    return DataIntegrityError(f"{path} is not a valid CIFAR-10 batch: {problem}. {fix}")


def _parse_batch(d: dict[str, Any], path: Path, num_classes: int, fix: str) -> tuple[np.ndarray, np.ndarray]:
    missing = [k for k in ("data", "labels") if k not in d]
    if missing:
        hint = " (a 'fine_labels' key means this is CIFAR-100, not CIFAR-10)" if "fine_labels" in d else ""
        raise _malformed(path, f"missing key(s) {missing}, has {sorted(d)}{hint}", fix)
    data = d["data"]
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
            or data.shape[1] != NUM_VIS):
        desc = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                else type(data).__name__)
        raise _malformed(path, f"'data' must be an (n, {NUM_VIS}) uint8 array, got {desc}", fix)
    labels = np.asarray(d["labels"])
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise _malformed(path, f"'labels' must be a list of ints, got {labels.dtype} of shape "
                               f"{labels.shape}", fix)
    labels = labels.astype(np.int64)
    if len(labels) != len(data):
        raise _malformed(path, f"{len(labels)} labels for {len(data)} images", fix)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise _malformed(path, f"labels span {labels.min()}..{labels.max()}, outside "
                               f"0..{num_classes - 1}", fix)
    return data, labels


def _read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return None
    fix = "Delete the folder and regenerate the synthetic data."
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataIntegrityError(f"{path} is not valid JSON ({e}). {fix}") from e
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(isinstance(files.get(n), str) for n in DATA_FILES):
        raise DataIntegrityError(f"{path} does not list an md5 for each of {', '.join(DATA_FILES)}. {fix}")
    if not isinstance(manifest.get("metadata", {}), dict):
        raise DataIntegrityError(f"{path}: 'metadata' must be a JSON object. {fix}")
    return manifest


def read_cifar10_folder(folder: str | os.PathLike) -> CifarArrays:
    """Read and verify a `cifar-10-batches-py` folder (real, or written by `write_cifar10_folder`).

    Every file's md5 is checked before it is unpickled and every batch's contents validated.
    Raises `DataNotFoundError`, `DataIntegrityError` or `UnsafePickleError`.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataNotFoundError(f"CIFAR-10 folder {folder} does not exist. Check the path, or call "
                                "load_cifar10() to extract or download the dataset.")
    manifest = _read_manifest(folder)
    fix = ("Delete the folder and regenerate the synthetic data (it was written by this project)."
           if manifest is not None else
           f"Delete the folder {folder} so that load_cifar10() re-extracts it from {ARCHIVE_NAME} "
           "(or re-downloads it).")

    missing = [name for name in DATA_FILES if not (folder / name).is_file()]
    if missing:
        raise DataNotFoundError(f"CIFAR-10 folder {folder} is incomplete: missing "
                                f"{', '.join(missing)}. {fix}")

    expected = manifest["files"] if manifest is not None else OFFICIAL_MD5
    source = f"its manifest {MANIFEST_NAME}" if manifest is not None else "the official CIFAR-10 md5"
    md5s: dict[str, str] = {}
    contents: dict[str, dict[str, Any]] = {}
    for name in DATA_FILES:
        path = folder / name
        raw = path.read_bytes()  # at most ~31 MB per file for the real dataset
        md5 = hashlib.md5(raw).hexdigest()
        if md5 != expected[name]:
            raise DataIntegrityError(
                f"{path} has md5 {md5} but {source} says {expected[name]} ({len(raw)} bytes on disk): "
                f"the file was altered or truncated (e.g. an interrupted copy). {fix}")
        md5s[name] = md5
        try:
            obj = safe_unpickle(raw, source=str(path))
        except UnsafePickleError:
            raise
        except Exception as e:  # truncated or garbled streams raise many types (EOFError, ValueError, ...)
            raise _malformed(path, f"it cannot be unpickled ({type(e).__name__}: {e})", fix) from e
        contents[name] = _str_keys(obj, path)

    meta_path = folder / META_FILE
    meta = contents[META_FILE]
    names = meta.get("label_names")
    if (not isinstance(names, (list, tuple)) or not names
            or not all(isinstance(s, (str, bytes)) for s in names)):
        raise _malformed(meta_path, f"'label_names' must be a non-empty list of strings, got {names!r}", fix)
    label_names = tuple(_as_text(s) for s in names)
    if meta.get("num_vis", NUM_VIS) != NUM_VIS:
        raise _malformed(meta_path, f"num_vis is {meta['num_vis']}, expected {NUM_VIS} (3 x 32 x 32)", fix)
    per_batch = meta.get("num_cases_per_batch")

    train = [_parse_batch(contents[n], folder / n, len(label_names), fix) for n in TRAIN_FILES]
    for n, (x, _) in zip(TRAIN_FILES, train):
        if per_batch is not None and len(x) != per_batch:
            raise _malformed(folder / n, f"it holds {len(x)} images but {META_FILE} says "
                                         f"num_cases_per_batch={per_batch}", fix)
    test_x, test_y = _parse_batch(contents[TEST_FILE], folder / TEST_FILE, len(label_names), fix)

    train_x = np.concatenate([x for x, _ in train]).reshape(-1, *IMAGE_SHAPE)
    train_y = np.concatenate([y for _, y in train])
    # An unpickled array is a view into the immutable bytes object it came from: own a copy.
    test_x = np.array(test_x.reshape(-1, *IMAGE_SHAPE), copy=True)
    return CifarArrays(
        train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
        label_names=label_names, folder=folder, fingerprint=data_fingerprint(md5s),
        synthetic=dict(manifest.get("metadata", {})) if manifest is not None else None,
    )


# --- archive and download -------------------------------------------------------------------------
def _check_member(member: tarfile.TarInfo, dest: Path, archive: Path) -> None:
    target = (dest / member.name).resolve()
    if (Path(member.name).is_absolute() or ".." in Path(member.name).parts
            or not target.is_relative_to(dest.resolve())):
        raise DataIntegrityError(f"{archive} contains {member.name!r}, which would be written outside "
                                 f"{dest}; refusing to extract it. Delete the archive and re-download it.")
    if not (member.isfile() or member.isdir()):
        raise DataIntegrityError(f"{archive} contains {member.name!r}, which is a link or special file "
                                 "(CIFAR-10's archive holds only files); refusing to extract it. "
                                 "Delete the archive and re-download it.")


def extract_archive(archive: str | os.PathLike, dest_root: str | os.PathLike,
                    expected_md5: str | None = ARCHIVE_MD5) -> Path:
    """Verify `archive`'s md5 and extract it safely; returns `dest_root / FOLDER_NAME`.

    `expected_md5` defaults to the official archive's (None skips the check). Members go to a
    temporary folder then into place, so an interrupted extraction leaves no half-filled folder.
    """
    archive, dest_root = Path(archive).expanduser(), Path(dest_root).expanduser()
    if not archive.is_file():
        raise DataNotFoundError(f"archive {archive} does not exist.")
    if expected_md5 is not None:
        md5 = md5_of_file(archive)
        if md5 != expected_md5:
            raise DataIntegrityError(
                f"{archive} has md5 {md5}, expected {expected_md5}: the archive is altered or truncated "
                f"(e.g. an interrupted download). Delete it and download it again from {ARCHIVE_URL}.")
    target = dest_root / FOLDER_NAME
    if target.exists():
        raise FileExistsError(f"{target} already exists; delete it first to extract {archive} again.")
    dest_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest_root, prefix=".extract-") as tmp:
        tmp_path = Path(tmp)
        tar = None
        try:
            tar = tarfile.open(archive, "r:*")
            members = tar.getmembers()
        except (tarfile.TarError, EOFError, OSError) as e:
            if tar is not None:
                tar.close()
            raise DataIntegrityError(f"{archive} is not a readable tar.gz ({e}). Delete it and download "
                                     f"it again from {ARCHIVE_URL}.") from e
        with tar:
            for m in members:
                _check_member(m, tmp_path, archive)
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12: belt and braces
                tar.extractall(tmp_path, members=members, filter="data")
            else:
                tar.extractall(tmp_path, members=members)
        if not (tmp_path / FOLDER_NAME).is_dir():
            raise DataIntegrityError(f"{archive} does not contain a {FOLDER_NAME}/ folder, so it is not the "
                                     f"CIFAR-10 python archive. Download {ARCHIVE_URL} instead.")
        os.replace(tmp_path / FOLDER_NAME, target)
    return target


def download_cifar10(root: str | os.PathLike, url: str = ARCHIVE_URL, expected_md5: str | None = ARCHIVE_MD5,
                     progress: bool = True) -> Path:
    """Download the archive to `root / ARCHIVE_NAME` (md5-checked, atomic); returns that path.

    A failed or interrupted download never leaves a file that looks complete; network failures
    raise `DataNotFoundError` saying how to provide the data by hand.
    """
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    final = root / ARCHIVE_NAME
    fd, tmp = create_temp(root, ARCHIVE_NAME)
    try:
        h = hashlib.md5()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as resp:
                    total = int(resp.headers.get("Content-Length") or 0) or None
                    bar = _progress_bar(total, f"downloading {ARCHIVE_NAME}") if progress else None
                    try:
                        for chunk in iter(lambda: resp.read(_CHUNK), b""):
                            try:
                                out.write(chunk)
                            except OSError as e:  # not a network failure: keep it apart
                                raise _LocalWriteError(e) from e
                            h.update(chunk)
                            if bar is not None:
                                bar.update(len(chunk))
                    finally:
                        if bar is not None:
                            bar.close()
            except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
                # URLError: refused/unresolvable hosts and HTTP errors; OSError: timeouts and resets
                # mid-stream; HTTPException: a connection cut short; ValueError: a malformed URL.
                reason = getattr(e, "reason", None) or e
                raise DataNotFoundError(_not_found_message(root, f"{url}: {reason}")) from e
            except _LocalWriteError as e:
                raise OSError(f"could not write the download to {tmp} ({e.__cause__}); free some disk "
                              f"space there or point {DATA_ENV_VAR} at another folder.") from e.__cause__
        md5 = h.hexdigest()
        if expected_md5 is not None and md5 != expected_md5:
            raise DataIntegrityError(
                f"the file downloaded from {url} has md5 {md5}, expected {expected_md5}: the download "
                "was corrupted or the server sent something else (a proxy's error page?). Nothing was "
                f"kept; try again, or put {ARCHIVE_NAME} in {root} by hand.")
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


class _LocalWriteError(Exception):
    """Writing the download to disk failed (as opposed to the network)."""


def _progress_bar(total: int | None, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency, but a progress bar is not worth failing for
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc)


def _looks_like_batches_folder(path: Path) -> bool:
    return any((path / name).is_file() for name in DATA_FILES + (MANIFEST_NAME,))


def load_cifar10(root: str | os.PathLike | None = None, download: bool = True, *,
                 url: str = ARCHIVE_URL, archive_md5: str | None = ARCHIVE_MD5,
                 progress: bool = True) -> CifarArrays:
    """CIFAR-10 from `root` (default: `default_data_root()`), extracting or downloading as needed.

    Looks for `root` itself being the batches folder, `root/cifar-10-batches-py/`, then
    `root/cifar-10-python.tar.gz`; else downloads it from `url` when `download` is True, else
    raises `DataNotFoundError` saying how to provide the data. `archive_md5`: as for
    `extract_archive`.
    """
    root = Path(root).expanduser() if root is not None else default_data_root()
    if root.is_dir() and _looks_like_batches_folder(root):
        return read_cifar10_folder(root)
    folder = root / FOLDER_NAME
    if folder.is_dir():
        return read_cifar10_folder(folder)
    archive = root / ARCHIVE_NAME
    if not archive.is_file():
        if not download:
            raise DataNotFoundError(_not_found_message(root))
        archive = download_cifar10(root, url=url, expected_md5=archive_md5, progress=progress)
    return read_cifar10_folder(extract_archive(archive, root, expected_md5=archive_md5))
