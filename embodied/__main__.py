"""``python -m embodied ...``: the CLI, also as torchrun's module (``torchrun -m embodied train``)."""

import sys

from embodied.cli import main

if __name__ == "__main__":
    sys.exit(main())
