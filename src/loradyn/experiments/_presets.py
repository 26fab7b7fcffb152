"""Training settings shared by the real-model init comparisons (not an experiment)."""

MINILM_LORA = {"rank": 8, "alpha": 16.0, "target_modules": ["query", "key", "value", "dense"]}
SMOL_LORA = {"rank": 8, "alpha": 16.0, "target_modules": ["q_proj", "v_proj"]}
# sentiment-init and trec6-init share training and grid settings; only the task differs
MINILM_FULL_TRAIN = {"steps": 100, "batch_size": 16, "eval_batch_size": 50, "warmup_steps": 10, "probe_every": 25}
MINILM_QUICK_TRAIN = {"steps": 40, "batch_size": 16, "eval_batch_size": 50, "warmup_steps": 8, "probe_every": 10}
# LoRA+ (ratio 16) has its own lower lr_a grid: on the shared 2^-13..2^-8 grid both of its optima
# sat on the lower edge (docs/results/real-models.md).
MINILM_FULL_GRID = {"lr_log2": (-13, -8, 1), "lr_ratios": (1.0, 16.0), "lr_log2_by_ratio": {16.0: (-16, -11, 1)}}
MINILM_QUICK_GRID = {"lr_log2": (-11, -7, 2), "lr_ratios": (1.0, 16.0)}
