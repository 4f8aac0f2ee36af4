"""``python -m flux_nb``: the ``flux-nb`` command."""

import sys

from flux_nb.cli import main

sys.exit(main())
