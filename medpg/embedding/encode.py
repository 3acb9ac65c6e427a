"""Encode claimed chunks with the article encoder, isolating the chunks it fails on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from medpg.embedding.records import ClaimedChunk

if TYPE_CHECKING:
    from medpg.encoders import ArticleEncoder

Encoded = list[tuple[ClaimedChunk, np.ndarray]]
Failed = list[tuple[ClaimedChunk, BaseException]]


def encode_chunks(encoder: ArticleEncoder, chunks: Sequence[ClaimedChunk]) -> np.ndarray:
    """One encoder call for ``chunks``: their vectors, one row each."""
    vectors = encoder.encode_documents([c.title for c in chunks], [c.text for c in chunks])
    if vectors.shape != (len(chunks), encoder.dimension):
        raise ValueError(f"encoder returned shape {vectors.shape} for {len(chunks)} chunks")
    return vectors


def encode_isolating(encoder: ArticleEncoder, chunks: Sequence[ClaimedChunk]) -> tuple[Encoded, Failed]:
    """Encode ``chunks``; if the encoder fails, split the batch until the failing chunks are alone.

    Neighbours of a bad chunk are encoded normally; each bad chunk comes back with its error.
    Non-finite output rows count as a failure of that chunk (pgvector rejects NaN).
    """
    if not chunks:
        return [], []
    try:
        vectors = encode_chunks(encoder, chunks)
    except Exception as exc:  # noqa: BLE001 - encoders fail with many types; isolate, then record
        if len(chunks) == 1:
            return [], [(chunks[0], exc)]
        mid = len(chunks) // 2
        ok_left, bad_left = encode_isolating(encoder, chunks[:mid])
        ok_right, bad_right = encode_isolating(encoder, chunks[mid:])
        return ok_left + ok_right, bad_left + bad_right
    finite = np.isfinite(vectors).all(axis=1)
    ok = [(c, vectors[i]) for i, c in enumerate(chunks) if finite[i]]
    bad: Failed = [
        (c, ValueError("the encoder produced non-finite values"))
        for i, c in enumerate(chunks)
        if not finite[i]
    ]
    return ok, bad
