"""`python -m medsft` (and `accelerate launch -m medsft`)."""

import sys

from medsft.cli import main

if __name__ == "__main__":
    sys.exit(main())
