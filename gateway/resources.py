"""Where the project's own files live: a source checkout, or ``share/igsp-gateway``."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def data_dir(name: str) -> Path:
    """``spec`` or ``mappings``: env ``IGSP_<NAME>_DIR``, the checkout, then the install prefix."""
    override = os.environ.get(f"IGSP_{name.upper()}_DIR")
    if override:
        return Path(override)
    checkout = Path(__file__).resolve().parent.parent / name
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "igsp-gateway" / name
