"""`make lab` starts JupyterLab on the notebooks, as root too (the usual case in a container).

The test runs the `lab` recipe of the Makefile itself (with this Python for $(PY)), headless on a
free port with a random token, waits for its REST API, lists notebooks/ through it and stops it.
"""
import json
import os
import re
import secrets
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lab_recipe() -> list[str]:
    """The command of `make lab`, $(PY) as this Python and LAB_ARGS empty."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, l in enumerate(lines) if re.match(r"^lab\s*:", l))
    (recipe,) = [l.strip() for l in lines[start + 1:start + 2] if l.startswith("\t")]
    return shlex.split(recipe.replace("$(PY)", shlex.quote(sys.executable))
                       .replace("$(LAB_ARGS)", ""))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_make_lab_serves_the_numbered_notebooks(tmp_path):
    pytest.importorskip("jupyterlab", reason="JupyterLab is the project's `lab` extra: "
                                             "pip install -e '.[lab]'")
    token, port = secrets.token_hex(16), _free_port()
    cmd = _lab_recipe() + ["--no-browser", "--ServerApp.open_browser=False",
                           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
                           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}"]
    # the user's Jupyter settings (a password, another root) must not change what is tested
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    log = tmp_path / "lab.log"
    with log.open("w") as out:
        lab = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    try:
        url = f"http://127.0.0.1:{port}/api/contents?token={token}"
        listing, deadline = None, time.monotonic() + 60
        while listing is None and time.monotonic() < deadline:
            assert lab.poll() is None, f"JupyterLab exited ({lab.returncode}):\n" \
                                       f"{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    listing = json.load(resp)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        assert listing is not None, f"no answer in 60 s:\n{log.read_text()[-3000:]}"
        listed = {item["name"] for item in listing["content"]}
        numbered = {p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
        assert numbered and numbered <= listed, (numbered, listed)
    finally:
        lab.terminate()
        try:
            lab.wait(15)
        except subprocess.TimeoutExpired:
            lab.kill()
            lab.wait()
