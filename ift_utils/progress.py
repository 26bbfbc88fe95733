"""Progress bars that suit where they run: widgets in JupyterLab, sparse plain lines in headless logs.

The runner sets IFT_HEADLESS=1 for papermill runs, where widget bars would only show "0%" in the saved
notebook and flood logs; there a plain bar prints at most every 15 seconds to stderr.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def progress(iterable: Any = None, **kwargs: Any):
    """A tqdm bar: `tqdm.auto` interactively, a plain stderr bar (mininterval 15 s) when headless."""
    if os.environ.get("IFT_HEADLESS"):
        from tqdm.std import tqdm

        kwargs.setdefault("mininterval", 15.0)
        kwargs.setdefault("file", sys.stderr)
        kwargs.setdefault("ascii", True)
        return tqdm(iterable, **kwargs)
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)
