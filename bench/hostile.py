"""``python -m bench.hostile``: the hostile suite under its documented name (``bench.serving.hostile``)."""

import sys

from bench.serving.hostile import main

if __name__ == "__main__":
    sys.exit(main())
