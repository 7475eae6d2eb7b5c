"""`python -m fa_nb_utils.train`: the command line of `fa_nb_utils.cli.train_main`.

Kept apart from the package's modules (the package never imports this file), so that running it
with `python -m` does not import the same module twice.
"""
import sys

from .cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
