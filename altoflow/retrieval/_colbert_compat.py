"""COMPATIBILITY SHIM: colbert-ai 0.2.22 under transformers 5. Remove once colbert-ai fixes it.

What breaks. colbert-ai builds its model class, ``HF_ColBERT``, in
``colbert.modeling.hf_colbert.class_factory``; its ``__init__`` ends with ``self.init_weights()``
and never calls ``self.post_init()``. transformers 5 relies on ``post_init()`` to set
per-instance bookkeeping (``all_tied_weights_keys``, the ``_keep_in_fp32_modules`` sets, ...),
and its ``from_pretrained`` reads it, so loading any checkpoint fails with::

    AttributeError: 'HF_ColBERT' object has no attribute 'all_tied_weights_keys'

What we change. ``apply()`` wraps ``class_factory`` so that each ``HF_ColBERT`` class it makes
calls ``post_init()`` at the end of ``__init__`` when that bookkeeping is missing, which is what
every transformers model is required to do. Nothing else about colbert-ai changes, and a
colbert-ai that calls ``post_init()`` itself is left alone. ``colbert.modeling.base_colbert``
imported ``class_factory`` by name, and that is the copy that builds models, so it is rebound
there as well as in ``hf_colbert``. The tokenizer modules hold copies too but only call a
static tokenizer loader on the class, which ``post_init`` does not affect.

The patch is process-wide and idempotent; ``ColBERTReranker`` applies it before loading.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

__all__ = ["apply"]

_MARK = "_altoflow_post_init_compat"
_lock = threading.Lock()


def apply() -> None:
    """Make colbert-ai's ``HF_ColBERT`` call ``post_init()``. Safe to call many times."""
    from colbert.modeling import base_colbert, hf_colbert

    with _lock:
        original = hf_colbert.class_factory
        if getattr(original, _MARK, False):
            return

        @functools.wraps(original)
        def class_factory(name_or_path: str) -> type:
            model_class = original(name_or_path)
            _call_post_init_after_init(model_class)
            return model_class

        setattr(class_factory, _MARK, True)
        hf_colbert.class_factory = class_factory
        base_colbert.class_factory = class_factory


def _call_post_init_after_init(model_class: type) -> None:
    init = model_class.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        # vars(), not hasattr(): torch.nn.Module.__getattr__ would look in parameters and
        # submodules, and post_init sets a plain instance attribute.
        if "all_tied_weights_keys" not in vars(self):
            self.post_init()

    # class_factory makes a fresh class on every call, so patching it in place touches no
    # class that anyone else holds.
    model_class.__init__ = __init__  # type: ignore[misc]
