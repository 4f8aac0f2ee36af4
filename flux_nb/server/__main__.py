"""``python -m flux_nb.server``: run the local server (same options as ``flux-nb serve``)."""

import sys

from flux_nb.cli import main

sys.exit(main(["serve", *sys.argv[1:]]))
