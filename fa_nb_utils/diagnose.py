"""`python -m fa_nb_utils.diagnose`: the command line of `fa_nb_utils.cli.diagnose_main`.

Kept apart from the package's modules (the package never imports this file), so that running it
with `python -m` does not import the same module twice.
"""
import sys

from .cli import diagnose_main

if __name__ == "__main__":
    sys.exit(diagnose_main())
