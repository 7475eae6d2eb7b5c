"""`python -m fa_nb_utils.lab`: JupyterLab on the numbered notebooks (what `make lab` runs).

It adds --allow-root when the user is root (as in a container, where JupyterLab otherwise refuses
to start); further arguments go to JupyterLab, e.g. `--no-browser --port 8890`.
"""
import os
import sys
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def command(args: list[str]) -> list[str]:
    """The JupyterLab command line for `args`."""
    root = ["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    return [sys.executable, "-m", "jupyter", "lab", f"--ServerApp.root_dir={NOTEBOOKS}",
            *root, *args]


def main(args: list[str] | None = None) -> int:
    if not NOTEBOOKS.is_dir():
        print(f"error: no notebooks folder at {NOTEBOOKS}; run this from a checkout of the "
              "project (pip install -e '.[lab]')", file=sys.stderr)
        return 2
    cmd = command(sys.argv[1:] if args is None else args)
    if os.name == "posix":  # become JupyterLab: Ctrl-C and signals reach it directly
        os.execv(sys.executable, cmd)
    import subprocess
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
