"""Tiny models for tests: a plain-torch attention toy and randomly initialised transformers models.

The transformers builders never download anything (models come from a config) and return float64
models in eval mode with dropout off and eager attention, so outputs are deterministic.
"""

from __future__ import annotations

import torch
from torch import nn


class ToyAttention(nn.Module):
    """Single-head attention block with PEFT-style names: q_proj, k_proj, v_proj, o_proj, plus a head."""

    def __init__(self, width: int = 16, vocab: int = 32, n_out: int = 3) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, width)
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width)
        self.o_proj = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.classifier = nn.Linear(width, n_out)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed_tokens(ids)
        q, k, v = self.q_proj(h), self.k_proj(h), self.v_proj(h)
        att = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        h = self.norm(h + self.o_proj(att @ v))
        return self.classifier(h.mean(dim=-2))


def _finish(model: nn.Module) -> nn.Module:
    return model.to(torch.float64).eval()


def tiny_llama(seed: int = 0) -> nn.Module:
    """LlamaForCausalLM: hidden 32, 2 layers, vocab 64, untied lm_head."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
        tie_word_embeddings=False, attn_implementation="eager",
    )
    torch.manual_seed(seed)
    return _finish(LlamaForCausalLM(config))


def tiny_bert(seed: int = 0) -> nn.Module:
    """BertModel: hidden 32, 2 layers, vocab 64, no dropout."""
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=48, max_position_embeddings=32, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, attn_implementation="eager",
    )
    torch.manual_seed(seed)
    return _finish(BertModel(config))


def tiny_gpt2(seed: int = 0) -> nn.Module:
    """GPT2LMHeadModel (Conv1D c_attn / c_proj / c_fc): n_embd 32, 2 layers, vocab 64, no dropout."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="eager",
        bos_token_id=0, eos_token_id=0,
    )
    torch.manual_seed(seed)
    return _finish(GPT2LMHeadModel(config))


def model_output(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The main output tensor of a transformers model (logits or last hidden state) or a toy."""
    out = model(ids)
    if isinstance(out, torch.Tensor):
        return out
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def train_steps(model: nn.Module, ids: torch.Tensor, steps: int = 3, lr: float = 1e-2) -> None:
    """A few Adam steps on the mean square of the output (moves every LoRA factor off its init)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        model_output(model, ids).pow(2).mean().backward()
        opt.step()
