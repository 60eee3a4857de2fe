"""Named phases of a run: the wall seconds of each, and a progress line for each while it runs.

A run is more than its training loop (model load, precompute, the evaluations, edges, views, the report);
:class:`Phases` times each and shows what is running, so a long run never sits silent::

    phases = Phases(progress=True)
    with phases("evaluate test", total=len(pairs), unit="pairs") as bar:
        for batch in pairs.batches(32):
            ...
            bar.update(len(batch))
    phases.seconds  # {"evaluate test": 4.2}
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from tqdm.auto import tqdm


@dataclass
class Phases:
    """Wall seconds of each named phase, in the order they ran, and whether to show their progress.

    Attributes:
        seconds: ``{phase: seconds}``; a phase that runs twice adds up.
        progress: draw a progress bar (to stderr) for each phase while it runs.
    """

    seconds: dict[str, float] = field(default_factory=dict)
    progress: bool = True

    @contextmanager
    def __call__(self, name: str, total: int | None = None, unit: str = "it", show: bool = True):
        """Time the ``with`` block as phase ``name``; yields a ``tqdm`` bar (``update(n)``; a silent one without
        ``progress``, or with ``show=False`` for a phase that draws its own). Without ``total`` the bar shows
        the phase's name and elapsed time."""
        fmt = None if total else "{desc} … {elapsed}"
        bar = tqdm(total=total, desc=name, unit=unit, disable=not (self.progress and show), dynamic_ncols=True,
                   bar_format=fmt, leave=False, file=sys.stderr)
        t0 = time.perf_counter()
        try:
            yield bar
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            bar.close()


def silent() -> Phases:
    """A new :class:`Phases` that records seconds and draws nothing."""
    return Phases(progress=False)
