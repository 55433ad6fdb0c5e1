"""`python -m graphgrad ...` runs the `graphgrad` command (for environments whose scripts
directory is not on PATH)."""
import sys

from graphgrad.cli import main

sys.exit(main())
