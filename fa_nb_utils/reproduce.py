"""`python -m fa_nb_utils.reproduce`, the command line of `fa_nb_utils.cli.reproduce_main`. The
function `reproduce` lives in `fa_nb_utils.paper.runner`; importing this file is refused, as
for the other command lines."""
import sys

from .cli import reproduce_main

if __name__ == "__main__":
    sys.exit(reproduce_main())
if __name__ != "__mp_main__":  # a spawned pool worker re-reads the main module so
    raise ImportError("fa_nb_utils.reproduce is the command `python -m fa_nb_utils.reproduce`; "
                      "import the function: `from fa_nb_utils.paper.runner import reproduce`")
