"""``wiki-init``: Init[A] vs Init[B] (and LoRA+) with SmolLM2-135M on Wikipedia, by perplexity."""

from ._presets import SMOL_LORA
from .init_compare import Metric, Params, init_experiment

# bf16: 2.4x faster than float32 on an avx512_bf16 CPU (benchmarks/bench_causal_step.py).
# Half-octave grids around the optima of the earlier 4x grid (2^-10 for lr_ratio 1, 2^-12 for 16),
# where both inits had the same optimum: a 4x grid cannot separate optima less than 4x apart.
FULL = Params(
    base={"task": {"kind": "wiki-lm", "n_val": 64, "n_test": 64}, "lora": SMOL_LORA, "optim": {"name": "adamw"},
          "train": {"steps": 100, "batch_size": 8, "eval_batch_size": 16, "warmup_steps": 10,
                    "bf16": True, "max_pack": 4, "probe_every": 10}},
    lr_log2=(-11, -8, 0.5), lr_ratios=(1.0, 16.0), lr_log2_by_ratio={16.0: (-13, -10, 0.5)}, seeds=3,
)
QUICK = Params(
    base={"task": {"kind": "wiki-lm", "seq_len": 64, "n_train": 400, "n_val": 16, "n_test": 16},
          "lora": SMOL_LORA, "optim": {"name": "adamw"},
          "train": {"steps": 20, "batch_size": 4, "eval_batch_size": 8, "max_pack": 3, "probe_every": 10}},
    lr_log2=(-12, -8, 2), lr_ratios=(1.0,), seeds=1,
)

EXPERIMENT = init_experiment(
    "wiki-init",
    "SmolLM2-135M on Wikipedia: Init[A]'s optimal lr is larger and its perplexity as good (2406.08447)",
    metric=Metric("val_ppl", "min", "test_ppl"), quick=QUICK, full=FULL, order=130,
)
