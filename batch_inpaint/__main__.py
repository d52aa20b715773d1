"""`python -m batch_inpaint ...`: the same as the `batch-inpaint` script."""

import sys

from batch_inpaint.cli import main

if __name__ == "__main__":
    sys.exit(main())
