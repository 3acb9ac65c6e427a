"""The shared vocabularies: one definition of each closed set of names medpg accepts.

Settings, the search pipeline, the CLI, the encoders and (later) the API import these instead of
restating them. The SQL functions check the same names (``migrations/sql/``); a test compares them.
"""

from __future__ import annotations

from typing import Literal, get_args

SearchMode = Literal["hybrid", "dense", "lexical"]
LexicalScorer = Literal["bm25", "ts_rank", "pg_textsearch"]
FusionMethod = Literal["adaptive", "weighted", "rrf"]
FeedbackMethod = Literal["rocchio", "none"]
Similarity = Literal["ip", "cosine"]
ModelProfile = Literal["medcpt", "minilm", "sentence-transformers"]
EncoderRole = Literal["query", "article", "cross"]
EncoderKind = Literal["medcpt", "sentence-transformers"]

SEARCH_MODES: tuple[str, ...] = get_args(SearchMode)
LEXICAL_SCORERS: tuple[str, ...] = get_args(LexicalScorer)
FUSION_METHODS: tuple[str, ...] = get_args(FusionMethod)
FEEDBACK_METHODS: tuple[str, ...] = get_args(FeedbackMethod)
SIMILARITIES: tuple[str, ...] = get_args(Similarity)
MODEL_PROFILES: tuple[str, ...] = get_args(ModelProfile)

__all__ = [
    "FEEDBACK_METHODS",
    "FUSION_METHODS",
    "LEXICAL_SCORERS",
    "MODEL_PROFILES",
    "SEARCH_MODES",
    "SIMILARITIES",
    "EncoderKind",
    "EncoderRole",
    "FeedbackMethod",
    "FusionMethod",
    "LexicalScorer",
    "ModelProfile",
    "SearchMode",
    "Similarity",
]
