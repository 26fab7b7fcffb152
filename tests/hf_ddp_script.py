"""Run by tests/test_hf.py under `accelerate launch --cpu --num_processes 2`: a 2-rank DDP (gloo) Trainer run.

Each rank trains a tiny BERT classifier with PEFT LoRA through loradyn.hf (Init[B], LoRA+, probes)
and saves its adapter tensors to OUT/rank{r}.pt, with the optimizer's learning rates and the logs.
"""

from __future__ import annotations

import json
import os
import sys

import torch

torch.set_num_threads(1)


class Rows(torch.utils.data.Dataset):
    def __init__(self, n: int, seq: int, vocab: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, vocab, (n, seq), generator=g)
        self.labels = (self.ids[:, 0] % 2).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


def main(out: str) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

    import loradyn.hf

    torch.manual_seed(1234 + int(os.environ.get("RANK", "0")))  # ranks start from different global RNG states
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        base = BertForSequenceClassification(config)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS"))
    args = TrainingArguments(
        output_dir=os.path.join(out, "trainer"), per_device_train_batch_size=4, max_steps=6, learning_rate=1e-2,
        weight_decay=0.01, logging_steps=2, report_to=[], save_strategy="no", use_cpu=True, seed=0,
        ddp_backend="gloo", disable_tqdm=True,
    )
    trainer = loradyn.hf.LoradynTrainer(model=model, args=args, train_dataset=Rows(48, 8, 64), lr_ratio=8.0)
    callback = loradyn.hf.setup(trainer, init="B", lr_ratio=None, probes=1, seed=7)
    trainer.train()
    rank = int(os.environ.get("RANK", "0"))
    state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    torch.save(state, os.path.join(out, f"rank{rank}.pt"))
    info = {
        "world_size": trainer.args.world_size,
        "lrs": sorted({g.get("initial_lr", g["lr"]) for g in trainer.optimizer.param_groups}),
        "log_keys": sorted({k for rec in trainer.state.log_history for k in rec}),
        "probe_rows": len(callback.probe.to_frame()),
    }
    with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
        json.dump(info, fh)


if __name__ == "__main__":
    main(sys.argv[1])
