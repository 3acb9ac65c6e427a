"""Length-sorted, token-budget batches: little padding, bounded memory, results in input order.

Pure Python (no torch) so the grouping can be unit-tested on its own.
"""

from __future__ import annotations

from collections.abc import Sequence


def token_budget_batches(lengths: Sequence[int], max_batch_size: int, max_tokens: int) -> list[list[int]]:
    """Group input indices into batches of similar token length.

    Indices are sorted longest first, so each batch's first item sets its padded length; a batch
    grows while it has at most ``max_batch_size`` items and ``items x longest <= max_tokens``
    padded tokens. An input longer than ``max_tokens`` gets a batch of its own. Callers scatter
    results back by index, so the output order is the input order.
    """
    if max_batch_size < 1 or max_tokens < 1:
        raise ValueError("max_batch_size and max_tokens must be positive")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        if not current:
            current, longest = [index], max(lengths[index], 1)
            continue
        if len(current) < max_batch_size and (len(current) + 1) * longest <= max_tokens:
            current.append(index)
        else:
            batches.append(current)
            current, longest = [index], max(lengths[index], 1)
    if current:
        batches.append(current)
    return batches
