"""One progress-bar policy for the whole package.

Bars draw only when stderr is a terminal (tqdm's ``disable=None``): piped or
logged output, and the one-line errors of the CLI, stay free of bar debris.
``TRILEMMA_PROGRESS=1`` forces bars on (a ``nohup`` training whose log you
tail), ``TRILEMMA_PROGRESS=0`` forces them off.
"""

from __future__ import annotations

import os

from tqdm.auto import tqdm


def progress(iterable=None, *, enabled: bool = True, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, shown when ``enabled`` and the policy above allows."""
    forced = os.environ.get("TRILEMMA_PROGRESS")
    if not enabled or forced == "0":
        disable = True
    elif forced == "1":
        disable = False
    else:
        disable = None  # tqdm: off when stderr is not a tty
    return tqdm(iterable, disable=disable, **kwargs)
