"""The same as `handgrad bench`: python benchmarks/bench.py [--json FILE] [--plot PNG] [--device cuda] ..."""

import sys

from handgrad.cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
