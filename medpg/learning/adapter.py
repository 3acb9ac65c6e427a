"""The query adaptation's arithmetic: a residual linear map on the query encoder's output.

``q' = (q + W q) * |q| / |q + W q|``: for a normalized encoder (MiniLM) this is
``normalize(q + W q)``; for an inner-product one (MedCPT) the query keeps its length, so dense
scores stay on the scale they had. W starts at zero, so training starts from the encoder as it
is, and weight decay pulls it back there. Only the query side moves: the stored document vectors
are what W is trained against, and they are never re-embedded.

The same arithmetic runs in SQL (``medpg.adapt_query_embedding``,
``migrations/sql/idempotent/110_query_adaptation.sql``) for applications that compute their own
query vectors; a test checks the two agree. Numpy only: search applies an adaptation without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

KIND = "residual_linear"


@dataclass(frozen=True, eq=False)
class ResidualLinear:
    """``W`` (dimension x dimension, float32) of ``q' = (q + W q) * |q| / |q + W q|``."""

    weight: np.ndarray
    _transposed: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        w = np.asarray(self.weight, dtype=np.float32)
        if w.ndim != 2 or w.shape[0] != w.shape[1] or not np.isfinite(w).all():
            raise ValueError(f"a residual linear adapter needs a finite square matrix, got shape {w.shape}")
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "_transposed", w.astype(np.float64).T.copy())  # applied in float64

    @property
    def dimension(self) -> int:
        return int(self.weight.shape[0])

    @classmethod
    def identity(cls, dimension: int) -> ResidualLinear:
        return cls(np.zeros((dimension, dimension), dtype=np.float32))

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Adapt one query vector (1-d) or a batch (rows); float32 out, computed in float64."""
        q = np.asarray(vectors, dtype=np.float64)
        single = q.ndim == 1
        q2 = q[None, :] if single else q
        if q2.shape[-1] != self.dimension:
            raise ValueError(f"query vectors have {q2.shape[-1]} dimensions, the adapter {self.dimension}")
        x = q2 + q2 @ self._transposed
        q_norm = np.linalg.norm(q2, axis=1, keepdims=True)
        x_norm = np.linalg.norm(x, axis=1, keepdims=True)
        degenerate = (x_norm == 0) | (q_norm == 0)
        out = np.where(degenerate, q2, x * (q_norm / np.where(x_norm == 0, 1.0, x_norm)))
        result = out.astype(np.float32)
        return result[0] if single else result


__all__ = ["KIND", "ResidualLinear"]
