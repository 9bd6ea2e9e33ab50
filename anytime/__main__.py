"""``python -m anytime``: the ``anytime`` command (:func:`anytime.cli.main`),
with the same arguments, output and exit statuses."""

from __future__ import annotations

import sys

from anytime.cli import main

if __name__ == "__main__":
    sys.exit(main())
