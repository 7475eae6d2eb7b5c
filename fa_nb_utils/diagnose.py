"""`python -m fa_nb_utils.diagnose`: the command line of `fa_nb_utils.cli.diagnose_main`.

The function `diagnose` lives in `fa_nb_utils.protocol` (`from fa_nb_utils import diagnose`).
Importing this file is refused: the import would put it in place of that function as
`fa_nb_utils.diagnose`.
"""
import sys

from .cli import diagnose_main

if __name__ != "__main__":
    raise ImportError("fa_nb_utils.diagnose is the command `python -m fa_nb_utils.diagnose`, not "
                      "a module: import the function with `from fa_nb_utils import diagnose` (it "
                      "lives in fa_nb_utils.protocol), the command line's with "
                      "`from fa_nb_utils.cli import diagnose_main`")
sys.exit(diagnose_main())
