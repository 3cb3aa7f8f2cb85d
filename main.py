"""Entry point kept for users of the original layout: `python main.py` is `qryptify run`."""

import sys

from qryptify_ingestor.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["run", *sys.argv[1:]]))
