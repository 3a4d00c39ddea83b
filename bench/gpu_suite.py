"""``python -m bench.gpu_suite``: the GPU suite under its documented name (``bench.gpu.suite``)."""

import sys

from bench.gpu.suite import main

if __name__ == "__main__":
    sys.exit(main())
