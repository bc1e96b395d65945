"""`python -m dinov3nb ...`: the `dinov3nb` command line (`dinov3nb.cli.main`), for when the script is not on `PATH`.

Written by hand: nbdev exports the notebooks' modules and leaves this file alone."""
import sys

from dinov3nb.cli import main

if __name__ == "__main__":
    sys.exit(main())
