"""python -m miue_ext.bench: the same as `miue bench`."""
import sys

from miue_ext.bench import main

sys.exit(main())
