"""Seeds for every random draw of a run: mixed from ``run.seed`` and where the draw happens.

A draw is named by integers (the run's seed, the epoch, a rank, a step or a piece of the split),
never by OS entropy or by which process happened to do the work, so a run repeats exactly.
"""

from __future__ import annotations

import numpy as np

# Salts that keep the streams of one run apart (equal tuples of the other parts never collide).
PIECE_ORDER, ROW_ORDER, VIEWS_IN_TASK, VIEWS_ON_WORKER, BATCH_BUFFER = 1, 2, 3, 4, 5


def mixed_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence: nearby inputs give unrelated seeds)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))
