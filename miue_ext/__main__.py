"""`python -m miue_ext ...` is the `miue` command."""
import sys

from miue_ext.cli import main

sys.exit(main())
