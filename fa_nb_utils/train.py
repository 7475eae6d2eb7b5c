"""`python -m fa_nb_utils.train`, the command line of `fa_nb_utils.cli.train_main`. The function
`train` lives in `fa_nb_utils.trainer`; importing this file is refused, since the import would
put it in that function's place as `fa_nb_utils.train`."""
import sys

from .cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
if __name__ != "__mp_main__":  # a spawned pool worker re-reads the main module so
    raise ImportError("fa_nb_utils.train is the command `python -m fa_nb_utils.train`; import "
                      "the function: `from fa_nb_utils import train` (fa_nb_utils.trainer)")
