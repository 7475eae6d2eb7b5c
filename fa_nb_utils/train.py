"""`python -m fa_nb_utils.train`: the command line of `fa_nb_utils.cli.train_main`.

The function `train` lives in `fa_nb_utils.trainer` (`from fa_nb_utils import train`). Importing
this file is refused: the import would put it in place of that function as `fa_nb_utils.train`.
"""
import sys

from .cli import train_main

if __name__ != "__main__":
    raise ImportError("fa_nb_utils.train is the command `python -m fa_nb_utils.train`, not a "
                      "module: import the function with `from fa_nb_utils import train` (it lives "
                      "in fa_nb_utils.trainer), the command line's with "
                      "`from fa_nb_utils.cli import train_main`")
sys.exit(train_main())
