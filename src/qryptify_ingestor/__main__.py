"""`python -m qryptify_ingestor` is the `qryptify` command."""

from qryptify_ingestor.cli import main

raise SystemExit(main())
