"""``python -m prunec``: the same as the ``prunec`` command."""
from __future__ import annotations

from prunec.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
