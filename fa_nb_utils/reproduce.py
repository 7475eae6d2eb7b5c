"""`python -m fa_nb_utils.reproduce`: the command line of `fa_nb_utils.cli.reproduce_main`.

The function `reproduce` lives in `fa_nb_utils.paper.reproduce`. Importing this file is refused,
as for the other command lines (`fa_nb_utils.train`, `fa_nb_utils.diagnose`).
"""
import sys

from .cli import reproduce_main

if __name__ != "__main__":
    raise ImportError("fa_nb_utils.reproduce is the command `python -m fa_nb_utils.reproduce`, "
                      "not a module: import the function with `from fa_nb_utils.paper.reproduce "
                      "import reproduce`, the command line's with "
                      "`from fa_nb_utils.cli import reproduce_main`")
sys.exit(reproduce_main())
