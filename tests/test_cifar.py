"""CIFAR-10 on-disk format (fa_nb_utils/data/cifar.py): round trips, integrity checks, safe unpickling,
archive extraction and download, all on tiny random data in tmp_path and without the network."""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import socket
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from fa_nb_utils.data import cifar
from fa_nb_utils.data.cifar import (
    ARCHIVE_NAME, DATA_ENV_VAR, DATA_FILES, FOLDER_NAME, MANIFEST_NAME, META_FILE, TEST_FILE,
    TRAIN_FILES, CifarArrays, DataIntegrityError, DataNotFoundError, UnsafePickleError,
    download_cifar10, extract_archive, load_cifar10, read_cifar10_folder, safe_unpickle,
)
from fa_nb_utils.data.cifar_writer import write_cifar10_archive, write_cifar10_folder

LABELS = tuple(f"class{i}" for i in range(10))
META = {"generator": "test", "seed": 7}


def make_arrays(seed: int = 0, n_train: int = 50, n_test: int = 20):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8),
            rng.integers(0, 10, n_train), rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8),
            rng.integers(0, 10, n_test))


def write(folder, seed: int = 0):
    return write_cifar10_folder(folder, *make_arrays(seed), LABELS, META)


def rewrite_manifest_md5(folder, name):
    """Make the manifest vouch for a tampered file, to reach the checks behind the md5 check."""
    path = folder / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest["files"][name] = hashlib.md5((folder / name).read_bytes()).hexdigest()
    path.write_text(json.dumps(manifest))


@pytest.fixture
def folder(tmp_path):
    return write(tmp_path / FOLDER_NAME)


# --- round trip and determinism ---------------------------------------------------------------
def test_round_trip_returns_the_written_arrays_exactly(folder):
    train_x, train_y, test_x, test_y = make_arrays()
    data = read_cifar10_folder(folder)
    assert isinstance(data, CifarArrays)
    assert data.train_x.dtype == np.uint8 and data.train_x.shape == (50, 3, 32, 32)
    assert data.train_y.dtype == np.int64 and data.test_y.dtype == np.int64
    np.testing.assert_array_equal(data.train_x, train_x)
    np.testing.assert_array_equal(data.train_y, train_y)
    np.testing.assert_array_equal(data.test_x, test_x)
    np.testing.assert_array_equal(data.test_y, test_y)
    assert data.label_names == LABELS
    assert data.synthetic == META
    assert data.folder == folder
    assert len(data.fingerprint) == 64 and int(data.fingerprint, 16) >= 0
    # downstream code hands these to torch.from_numpy, which wants writable arrays
    assert data.train_x.flags.writeable and data.test_x.flags.writeable


def test_rows_use_cifar_channel_planes(tmp_path):
    """A batch row is 1024 red, then 1024 green, then 1024 blue values, each plane row-major."""
    train_x, train_y, test_x, test_y = make_arrays()
    write_cifar10_folder(tmp_path, train_x, train_y, test_x, test_y, LABELS, META)
    with open(tmp_path / TRAIN_FILES[0], "rb") as f:
        row = pickle.load(f, encoding="bytes")[b"data"][3]
    img = train_x[3]
    assert row[0] == img[0, 0, 0] and row[1] == img[0, 0, 1] and row[32] == img[0, 1, 0]
    assert row[1024] == img[1, 0, 0] and row[2048 + 31 * 32 + 31] == img[2, 31, 31]


def test_writing_twice_gives_byte_identical_files_and_fingerprints(tmp_path):
    a, b = write(tmp_path / "a"), write(tmp_path / "b")
    for name in DATA_FILES + (MANIFEST_NAME,):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert read_cifar10_folder(a).fingerprint == read_cifar10_folder(b).fingerprint
    other = read_cifar10_folder(write(tmp_path / "c", seed=1))
    assert other.fingerprint != read_cifar10_folder(a).fingerprint


def test_written_batches_load_like_the_real_files_with_plain_pickle(folder):
    """Other CIFAR readers see the same thing as on the real dataset: bytes keys under
    encoding="bytes" (the official recipe), str keys under encoding="latin1" (torchvision)."""
    raw = (folder / TEST_FILE).read_bytes()
    as_bytes = pickle.loads(raw, encoding="bytes")
    assert set(as_bytes) == {b"batch_label", b"labels", b"data", b"filenames"}
    as_latin1 = pickle.loads(raw, encoding="latin1")
    assert as_latin1["data"].shape == (20, 3072) and as_latin1["data"].dtype == np.uint8
    np.testing.assert_array_equal(as_latin1["labels"], make_arrays()[3])
    meta = pickle.loads((folder / META_FILE).read_bytes(), encoding="latin1")
    assert meta == {"label_names": list(LABELS), "num_cases_per_batch": 10, "num_vis": 3072}


# --- archive ----------------------------------------------------------------------------------
def test_archive_is_deterministic_and_reextracted_when_the_folder_is_gone(tmp_path, folder):
    md5 = write_cifar10_archive(folder, tmp_path / ARCHIVE_NAME)
    assert md5 == hashlib.md5((tmp_path / ARCHIVE_NAME).read_bytes()).hexdigest()
    assert write_cifar10_archive(folder, tmp_path / "again.tar.gz") == md5
    expected = read_cifar10_folder(folder)
    for name in os.listdir(folder):
        os.remove(folder / name)
    os.rmdir(folder)

    data = load_cifar10(tmp_path, download=False, archive_md5=md5)
    assert data.folder == tmp_path / FOLDER_NAME and data.fingerprint == expected.fingerprint
    np.testing.assert_array_equal(data.train_x, expected.train_x)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".extract-")]


def test_archive_must_match_the_official_md5_by_default(tmp_path, folder):
    write_cifar10_archive(folder, tmp_path / "x" / ARCHIVE_NAME)
    with pytest.raises(DataIntegrityError, match=r"altered or truncated.*download it again"):
        load_cifar10(tmp_path / "x", download=False)  # archive_md5 defaults to ARCHIVE_MD5
    assert not (tmp_path / "x" / FOLDER_NAME).exists()


def _tar_with(tmp_path, add):
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        add(tar)
    return path


@pytest.mark.parametrize("kind", ["parent", "absolute", "symlink"])
def test_extraction_refuses_members_escaping_the_destination(tmp_path, kind):
    def add(tar):
        if kind == "symlink":
            ti = tarfile.TarInfo(f"{FOLDER_NAME}/data_batch_1")
            ti.type, ti.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(ti)
        else:
            ti = tarfile.TarInfo("../escaped" if kind == "parent" else str(tmp_path / "escaped"))
            ti.size = 3
            tar.addfile(ti, io.BytesIO(b"bad"))

    archive = _tar_with(tmp_path, add)
    dest = tmp_path / "dest"
    with pytest.raises(DataIntegrityError, match="refusing to extract"):
        extract_archive(archive, dest, expected_md5=None)
    assert not (tmp_path / "escaped").exists() and not (dest / FOLDER_NAME).exists()


def test_extraction_names_an_archive_that_is_not_a_tarball(tmp_path):
    archive = tmp_path / ARCHIVE_NAME
    archive.write_bytes(b"<html>captive portal</html>")
    with pytest.raises(DataIntegrityError, match=r"(?s)not a readable tar\.gz.*download it again"):
        extract_archive(archive, tmp_path, expected_md5=None)
    assert not (tmp_path / FOLDER_NAME).exists()


# --- restricted unpickler ---------------------------------------------------------------------
def test_unpickler_refuses_a_pickle_that_would_run_a_command(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    payload = pickle.dumps({"data": Exploit()}, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match=r"not a CIFAR-10 batch.*(system|posix)"):
        safe_unpickle(payload, source="data_batch_1")
    assert not marker.exists()


def test_folder_read_refuses_code_even_when_the_manifest_vouches_for_it(folder, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (eval, (f"open({str(marker)!r}, 'w')",))

    (folder / TRAIN_FILES[1]).write_bytes(pickle.dumps({"data": Exploit()}, protocol=2))
    rewrite_manifest_md5(folder, TRAIN_FILES[1])
    with pytest.raises(UnsafePickleError, match=rf"{TRAIN_FILES[1]} is not a CIFAR-10 batch.*eval"):
        read_cifar10_folder(folder)
    assert not marker.exists()


def _py2_cifar_pickle(items) -> bytes:
    """A batch as Python 2's cPickle wrote the real files: protocol 2, str (BINSTRING) keys,
    BINPUT memo entries and `numpy.core.multiarray` names. Built here opcode by opcode,
    independently of the module's writer."""
    memo = iter(range(256))
    put = lambda: b"q" + bytes([next(memo)])  # noqa: E731
    def s(b: bytes) -> bytes:  # a Python-2 str: SHORT_BINSTRING or BINSTRING
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b
    out = b"\x80\x02}" + put() + b"("
    for key, value in items:
        out += s(key) + put()
        if isinstance(value, np.ndarray):
            out += (b"cnumpy.core.multiarray\n_reconstruct\n" + put() + b"cnumpy\nndarray\n" + put()
                    + b"K\x00\x85" + put() + s(b"b") + put() + b"\x87" + put() + b"R" + put()
                    + b"(K\x01" + b"K" + bytes([value.shape[0]]) + b"M" + struct.pack("<H", value.shape[1])
                    + b"\x86" + put() + b"cnumpy\ndtype\n" + put() + s(b"u1") + b"K\x00K\x01\x87" + put()
                    + b"R" + put() + b"(K\x03" + s(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"
                    + put() + b"b\x89" + s(value.tobytes()) + put() + b"t" + put() + b"b")
        elif isinstance(value, list):
            out += b"]" + put() + b"(" + b"".join(
                s(v) if isinstance(v, bytes) else b"K" + bytes([v]) for v in value) + b"e"
        elif isinstance(value, int):
            out += b"M" + struct.pack("<H", value)
        else:
            out += s(value) + put()
    return out + b"u."


def test_python2_style_batches_with_bytes_keys_and_numpy_core_load(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / FOLDER_NAME
    folder.mkdir()
    xs, ys = {}, {}
    for name in TRAIN_FILES + (TEST_FILE,):
        xs[name] = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        ys[name] = rng.integers(0, 10, 4).tolist()
        (folder / name).write_bytes(_py2_cifar_pickle([
            (b"batch_label", b"training batch 1 of 5"), (b"labels", ys[name]), (b"data", xs[name]),
            (b"filenames", [b"f%d.png" % i for i in range(4)])]))
    (folder / META_FILE).write_bytes(_py2_cifar_pickle([
        (b"num_cases_per_batch", 4), (b"label_names", [n.encode() for n in LABELS]), (b"num_vis", 3072)]))
    batch = safe_unpickle((folder / TEST_FILE).read_bytes())
    assert batch[b"labels"] == ys[TEST_FILE]
    # Without a manifest the official md5s apply (and rightly fail): vouch for these files instead.
    md5s = {n: hashlib.md5((folder / n).read_bytes()).hexdigest() for n in DATA_FILES}
    (folder / MANIFEST_NAME).write_text(json.dumps({"files": md5s, "metadata": {}}))

    data = read_cifar10_folder(folder)
    assert data.label_names == LABELS
    np.testing.assert_array_equal(data.test_x.reshape(4, 3072), xs[TEST_FILE])
    np.testing.assert_array_equal(data.train_y, np.concatenate([ys[n] for n in TRAIN_FILES]))


# --- damaged folders --------------------------------------------------------------------------
def test_missing_batch_is_named_with_the_fix(folder):
    os.remove(folder / "data_batch_3")
    with pytest.raises(DataNotFoundError, match=r"missing data_batch_3\. .*regenerate"):
        read_cifar10_folder(folder)


@pytest.mark.parametrize("damage", ["flip_byte", "truncate"])
def test_altered_or_truncated_batch_is_named(folder, damage):
    path = folder / "data_batch_2"
    raw = bytearray(path.read_bytes())
    if damage == "flip_byte":
        raw[len(raw) // 2] ^= 0xFF
    else:
        raw = raw[: len(raw) // 2]
    path.write_bytes(bytes(raw))
    with pytest.raises(DataIntegrityError, match=r"data_batch_2 has md5 .*altered or truncated"):
        read_cifar10_folder(folder)


def test_real_looking_folder_is_checked_against_the_official_md5(folder):
    os.remove(folder / MANIFEST_NAME)
    with pytest.raises(DataIntegrityError, match=r"official CIFAR-10 md5.*re-extracts"):
        read_cifar10_folder(folder)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(labels=[12] * len(d["labels"])), r"outside 0\.\.9"),
    (lambda d: d.update(data=d["data"][:, :100]), r"\(n, 3072\) uint8"),
    (lambda d: d.update(data=d["data"].astype(np.float32)), r"\(n, 3072\) uint8.*float32"),
    (lambda d: d.update(labels=d["labels"][:-1]), r"9 labels for 10 images"),
    (lambda d: d.update(fine_labels=d.pop("labels")), r"missing key.*CIFAR-100"),
    (lambda d: d.update(data=d["data"][:5], labels=d["labels"][:5]), r"num_cases_per_batch=10"),
])
def test_malformed_batch_contents_are_named(folder, change, message):
    name = TRAIN_FILES[4]
    batch = pickle.loads((folder / name).read_bytes(), encoding="latin1")
    change(batch)
    (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    rewrite_manifest_md5(folder, name)
    with pytest.raises(DataIntegrityError, match=rf"{name} is not a valid CIFAR-10 batch: .*{message}"):
        read_cifar10_folder(folder)


# --- finding, downloading ---------------------------------------------------------------------
def test_missing_data_without_download_explains_how_to_provide_it(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load_cifar10(tmp_path, download=False)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert str(tmp_path / FOLDER_NAME) in msg and str(tmp_path / ARCHIVE_NAME) in msg
    assert DATA_ENV_VAR in msg and "--data synthetic" in msg


def test_root_may_be_the_batches_folder_itself(folder):
    assert load_cifar10(folder, download=False).folder == folder
    assert load_cifar10(folder.parent, download=False).folder == folder


@pytest.fixture
def archive(tmp_path, folder):
    path = tmp_path / "served" / "cifar.tar.gz"
    return path, write_cifar10_archive(folder, path)


def test_download_from_a_file_url_then_load(tmp_path, archive):
    path, md5 = archive
    root = tmp_path / "root"
    got = download_cifar10(root, url=path.as_uri(), expected_md5=md5, progress=False)
    assert got == root / ARCHIVE_NAME and hashlib.md5(got.read_bytes()).hexdigest() == md5
    data = load_cifar10(tmp_path / "root2", url=path.as_uri(), archive_md5=md5, progress=False)
    np.testing.assert_array_equal(data.test_y, make_arrays()[3])


def test_download_with_a_bad_md5_keeps_nothing(tmp_path, archive):
    path, _ = archive
    root = tmp_path / "root"
    with pytest.raises(DataIntegrityError, match=r"md5 .*expected 0{32}.*Nothing was kept"):
        download_cifar10(root, url=path.as_uri(), expected_md5="0" * 32, progress=False)
    assert os.listdir(root) == []


def _no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def test_unreachable_url_fails_with_the_offline_help(tmp_path, monkeypatch):
    _no_proxy(monkeypatch)
    with pytest.raises(DataNotFoundError, match=r"offline.*--data synthetic") as err:
        load_cifar10(tmp_path, url="http://127.0.0.1:9/x.tar.gz", progress=False)
    assert str(tmp_path / FOLDER_NAME) in str(err.value) and DATA_ENV_VAR in str(err.value)
    assert os.listdir(tmp_path) == []  # no partial download left behind


@pytest.mark.timeout(60)   # a guard against a hang, not a measurement
def test_a_server_that_never_answers_is_given_up_after_the_socket_timeout(tmp_path, monkeypatch):
    """A host that accepts the connection and then sends nothing: the download must stop on the
    socket timeout (passed to every urlopen), once, with the offline help, leaving nothing."""
    _no_proxy(monkeypatch)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)              # connections complete in the backlog; nothing is ever sent
    url = f"http://127.0.0.1:{server.getsockname()[1]}/cifar-10-python.tar.gz"
    monkeypatch.setattr(cifar, "_DOWNLOAD_TIMEOUT_S", 0.2)
    real_urlopen = cifar.urllib.request.urlopen
    timeouts = []

    def counting_urlopen(*args, **kwargs):
        timeouts.append(kwargs.get("timeout"))
        return real_urlopen(*args, **kwargs)
    monkeypatch.setattr(cifar.urllib.request, "urlopen", counting_urlopen)
    try:
        with pytest.raises(DataNotFoundError, match=r"(?s)timed out.*offline") as err:
            load_cifar10(tmp_path, url=url, progress=False)
    finally:
        server.close()
    assert timeouts == [0.2]      # one attempt, under the socket timeout: no retry loop
    assert str(tmp_path / FOLDER_NAME) in str(err.value)
    assert os.listdir(tmp_path) == []


def test_a_download_that_stalls_mid_stream_is_given_up(tmp_path, monkeypatch):
    """The first chunk arrives, then the socket times out: DataNotFoundError, no partial file."""
    class Stalling:
        headers = {"Content-Length": "100000"}
        reads = 0

        def read(self, n):
            Stalling.reads += 1
            if Stalling.reads == 1:
                return b"x" * 1000
            raise socket.timeout("timed out")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False
    monkeypatch.setattr(cifar.urllib.request, "urlopen", lambda url, timeout=None: Stalling())
    with pytest.raises(DataNotFoundError, match="timed out"):
        download_cifar10(tmp_path, url="http://example.invalid/x.tar.gz", progress=False)
    assert Stalling.reads == 2 and os.listdir(tmp_path) == []


def test_default_data_root_honours_the_env_var(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "mine"))
    assert cifar.default_data_root() == tmp_path / "mine"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(DATA_ENV_VAR, "~/cifar")
    assert cifar.default_data_root() == tmp_path / "cifar"
    monkeypatch.delenv(DATA_ENV_VAR)
    root = cifar.default_data_root()
    assert root.name == "data" and (root.parent / "pyproject.toml").is_file()


# --- writer input validation ------------------------------------------------------------------
@pytest.mark.parametrize("fix, message", [
    (lambda a: a.update(train_x=a["train_x"].astype(np.float32)), r"uint8"),
    (lambda a: a.update(train_x=a["train_x"].transpose(0, 2, 3, 1)), r"channel-last.*transpose"),
    (lambda a: a.update(train_x=a["train_x"][:49], train_y=a["train_y"][:49]), r"divisible by 5"),
    (lambda a: a.update(test_y=a["test_y"] + 10), r"0\.\.9"),
    (lambda a: a.update(test_y=a["test_y"][:3]), r"shape \(20,\)"),
    (lambda a: a.update(metadata={"x": object()}), r"JSON-serialisable"),
])
def test_writer_rejects_bad_inputs_with_a_fix(tmp_path, fix, message):
    train_x, train_y, test_x, test_y = make_arrays()
    args = dict(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
                label_names=LABELS, metadata=META)
    fix(args)
    with pytest.raises(ValueError, match=message):
        write_cifar10_folder(tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()


def test_writer_will_not_overwrite_the_real_dataset(folder, monkeypatch):
    # Pretend this folder's files are the official ones (the real 160 MB files are not available).
    os.remove(folder / MANIFEST_NAME)
    real_md5 = {n: hashlib.md5((folder / n).read_bytes()).hexdigest() for n in DATA_FILES}
    monkeypatch.setattr(cifar, "OFFICIAL_MD5", real_md5)
    before = (folder / TEST_FILE).read_bytes()
    with pytest.raises(FileExistsError, match="real CIFAR-10 dataset.*refusing to overwrite"):
        write(folder, seed=1)
    assert (folder / TEST_FILE).read_bytes() == before


def test_an_interrupted_write_is_repaired_by_writing_again(folder):
    os.remove(folder / MANIFEST_NAME)  # the manifest is written last: as if killed just before it
    (folder / "data_batch_4").write_bytes(b"half")
    write(folder)
    np.testing.assert_array_equal(read_cifar10_folder(folder).train_x, make_arrays()[0])


def test_reading_needs_neither_torch_nor_torchvision():
    """cifar.py and the one module it imports (io.py) stand alone: imported in a fresh interpreter
    without the package's __init__ (which imports torch), they pull in no torch."""
    code = ("import importlib, sys, types\n"
            "for name, path in (('fa_nb_utils', sys.argv[1]), ('fa_nb_utils.data', sys.argv[2])):\n"
            "    sys.modules[name] = m = types.ModuleType(name); m.__path__ = [path]\n"
            "importlib.import_module('fa_nb_utils.data.cifar')\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'torchvision')))")
    data = Path(cifar.__file__).parent
    out = subprocess.run([sys.executable, "-c", code, str(data.parent), str(data)],
                         capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
