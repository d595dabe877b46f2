"""``python -m meg2fmri``: the same as the ``meg2fmri`` command."""

import sys

from .cli import main

sys.exit(main())
