"""`python -m miue_ext ...` is the `miue` command."""

import sys

try:
    from miue_ext.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python loads the command: one line, like any other moment
    print("miue: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
