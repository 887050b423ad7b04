"""Retrieval for altoflow pipelines: BM25 with per-token scores, and ColBERT reranking.

- ``BM25Index`` (extra ``bm25``: rank-bm25): ``build`` / ``save`` / ``load``, ``search(query, k)``
  and ``token_scores(token)``, whose sum over a query's tokens is the query's BM25 score, so a
  pipeline can fan a query out into tokens and fold their scores with ``ops.sum``.
- ``ColBERTReranker`` (extra ``colbert``: colbert-ai, torch): MaxSim reranking of candidates,
  offline, on CPU.
- ``load_foldoc``: the FOLDOC computing dictionary from Debian's ``dict-foldoc``, a real corpus.

Importing this package imports no third-party module; each backend imports its own when used.
See docs/integrations.md, section "Retrieval".
"""

from altoflow.retrieval._common import Hit, MissingExtraError
from altoflow.retrieval.bm25 import (
    BM25Index,
    IndexFormatError,
    Tokenizer,
    default_tokenize,
)
from altoflow.retrieval.colbert import (
    CheckpointError,
    ColBERTReranker,
    ColBERTSetupError,
    default_checkpoint,
)
from altoflow.retrieval.corpora import (
    CorpusNotFoundError,
    DictEntry,
    load_foldoc,
    read_dictd,
)

__all__ = [
    "BM25Index",
    "CheckpointError",
    "ColBERTReranker",
    "ColBERTSetupError",
    "CorpusNotFoundError",
    "DictEntry",
    "Hit",
    "IndexFormatError",
    "MissingExtraError",
    "Tokenizer",
    "default_checkpoint",
    "default_tokenize",
    "load_foldoc",
    "read_dictd",
]
