"""`python -m fa_nb_utils.diagnose`, the command line of `fa_nb_utils.cli.diagnose_main`. The
function `diagnose` lives in `fa_nb_utils.protocol`; importing this file is refused, since the
import would put it in that function's place as `fa_nb_utils.diagnose`."""
import sys

from .cli import diagnose_main

if __name__ == "__main__":
    sys.exit(diagnose_main())
if __name__ != "__mp_main__":  # a spawned pool worker re-reads the main module so
    raise ImportError("fa_nb_utils.diagnose is the command `python -m fa_nb_utils.diagnose`; "
                      "import the function: `from fa_nb_utils import diagnose` "
                      "(fa_nb_utils.protocol)")
