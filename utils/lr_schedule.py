"""The learning-rate schedule's factor, as a pure function of the step."""

import math


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR factor: step / warmup during warm-up, then cosine from 1 down to 0 at `total`."""
    if step < warmup:
        return step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
