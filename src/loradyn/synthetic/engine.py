"""The batched teacher–student engine: K LoRA configurations trained at once, hand-written.

One *pack* shares the width, rank, data seed, dtype, step count and Adam's betas/ε/weight decay;
each configuration has its own init, α rule, ``lr_a`` and ``lr_b = lr_ratio·lr_a`` and Adam state.
For k live configurations a step is (H = φ(W_in x) and G precomputed: G = H W*ᵀ in the ``hidden``
form, G = W_in x in the ``residual`` form, :mod:`loradyn.synthetic.data`; ``Bt`` = Bᵀ)::

    Zᵀ  = A_cat · Hᵀ                    one GEMM for all configs and rows (A_cat = the k A's stacked)
    P   = G + α Z · Bt ; R = relu(P)    baddbmm into a preallocated (transposed) block, relu in place
    y   = R · W_outᵀ ; loss_k = mean((y - y*)²)
    M   = 1[P > 0] = sign(R) (in place) ; dP = M ⊙ (∂L/∂y · W_out) is never formed:
    ∇Bt = Σ_o w_o ⊙ ((αZ ⊙ ∂L/∂y_o)ᵀ M) ;  ∇A_cat = (α Σ_o ∂L/∂y_o ⊙ M (Bt ⊙ w_o)ᵀ)ᵀ · H
    Adam with per-config learning rates (a (k,1,1) tensor multiplies the update direction)

The data rows are processed in blocks (:func:`block_rows`) so the (k, n, rows) block of Pᵀ stays in
cache and G is streamed once per step for all k configurations; ∇A_cat is one GEMM after the blocks. No autograd and no per-step
allocation of (k, N, n) tensors (the hot loop stays in cache). Every operation is row- or batch-separable,
so a configuration's numbers do not depend on which others share its pack: removing one (e.g.
when it diverges) leaves the rest bit-for-bit unchanged (tested).

Device: everything runs where the frozen parts are (:func:`loradyn.synthetic.frozen_parts`'s
``device``); on a GPU the row blocks are larger (:data:`GPU_BLOCK_BYTES`: there is no cache to fit),
so the summation order, and the last bits of the results, differ from the CPU's.

Divergence: the loss of every live configuration is checked at every step; a non-finite loss or
one above ``train.blowup_factor`` × its step-0 loss freezes the configuration at that step (it is
removed from the pack before its update) and it is reported as ``diverged``. So does the
instability alarm (``train.alarm``, :mod:`loradyn.alarm`), fed at its steps with the loss, the rms
of Z_A, of α·Z_B and of the input H, and ``α‖B A‖_F / ‖W*‖_F`` (:func:`_alarm_stats`: O(k r² (N + n))
per check, reads only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..alarm import Alarm, AlarmMonitor
from ..tasks.pulse import report_steps
from .data import FrozenParts, init_student
from .spec import SyntheticSpec

__all__ = ["ChunkOutcome", "eval_loss", "train_full", "train_lora_chunk"]

MODULE = "hidden"  # the LoRA pair's name in probe records


@dataclass
class ChunkOutcome:
    """What the engine returns per configuration (the task turns it into a TrialResult)."""

    status: str = "done"
    diverged_step: int = -1
    metrics: dict[str, float] = field(default_factory=dict)
    curves: list[dict] = field(default_factory=list)
    probes: list[dict] = field(default_factory=list)
    lora_A: torch.Tensor | None = None  # (r, n) final
    lora_B: torch.Tensor | None = None  # (n, r) final
    alarm: Alarm | None = None  # the instability alarm that stopped it


def _forward(a, bt, alpha, h, g, w_out):
    """Outputs (k, N, d) and Zᵀ (k, r, N) for stacked A (k,r,n), Bt (k,r,n), alpha (k,1,1). Allocates."""
    k, r, n = a.shape
    zt = (a.reshape(k * r, n) @ h.T).view(k, r, -1)
    zs = zt.transpose(1, 2) * alpha
    p = torch.bmm(zs, bt) if g is None else torch.baddbmm(g.expand(k, *g.shape), zs, bt)
    p.relu_()
    y = (p.view(-1, n) @ w_out.T).view(k, h.shape[0], -1)
    return y, zt


def eval_loss(a, bt, alpha, h, g, y_target, w_out) -> torch.Tensor:
    """Per-config MSE (k,) of stacked adapters on one split (allocating; not the hot loop)."""
    y, _ = _forward(a, bt, alpha, h, g, w_out)
    return (y - y_target).square().mean(dim=(1, 2))


def _norm_rows(zt, bt, alpha, step: int) -> list[list[dict]]:
    """Probe records per config: data-averaged l2/rms of z_a (r), z_b = B z_a and α z_b (n)."""
    k, r, _ = zt.shape
    n = bt.shape[2]
    za_l2 = zt.square().sum(dim=1).sqrt()  # (k, N)
    gram = torch.bmm(bt, bt.transpose(1, 2))  # (k, r, r) = BᵀB
    zb_sq = (torch.bmm(gram, zt) * zt).sum(dim=1).clamp_min(0)  # zᵀ BᵀB z
    zb_l2 = zb_sq.sqrt()
    za = za_l2.mean(dim=1).tolist()
    zb = zb_l2.mean(dim=1).tolist()
    al = alpha.view(-1).abs().tolist()
    out = []
    for i in range(k):
        vals = {"z_a": (za[i], r), "z_b": (zb[i], n), "lora_out": (zb[i] * al[i], n)}
        rows = []
        for feature, (l2, dim) in vals.items():
            rows.append({"step": step, "module": MODULE, "feature": feature, "stat": "rms", "value": l2 / math.sqrt(dim)})
            rows.append({"step": step, "module": MODULE, "feature": feature, "stat": "l2", "value": l2})
        out.append(rows)
    return out


def _alarm_stats(zt, a, bt, alpha, h_rms: float, w_norm: float | None) -> list[tuple[dict, float | None]]:
    """Per config: the probe's rms of z_a, z_b, lora_out = α z_b and x = H (data-averaged), and the
    update size ``|α|‖B A‖_F / ‖W*‖_F`` (None without W*), from ``‖B A‖_F² = Σ (BᵀB) ⊙ (A Aᵀ)``."""
    k, r, _ = zt.shape
    n = bt.shape[2]
    gram_b = torch.bmm(bt, bt.transpose(1, 2))  # (k, r, r) = BᵀB
    za = zt.square().sum(dim=1).sqrt().mean(dim=1) / math.sqrt(r)
    zb = (torch.bmm(gram_b, zt) * zt).sum(dim=1).clamp_min(0).sqrt().mean(dim=1) / math.sqrt(n)
    upd = (gram_b * torch.bmm(a, a.transpose(1, 2))).sum(dim=(1, 2)).clamp_min(0).sqrt()
    al = alpha.view(-1).abs()
    rows = torch.stack([za, zb, zb * al, upd * al]).T.tolist()
    return [({"z_a": z_a, "z_b": z_b, "lora_out": out, "x": h_rms}, None if w_norm is None else u / w_norm)
            for z_a, z_b, out, u in rows]


class _Adam:
    """Batched Adam/AdamW over a (k, ...) stack; the update direction is shared, lr is per config."""

    def __init__(self, param: torch.Tensor, lr: torch.Tensor, optim) -> None:
        self.p, self.lr = param, lr
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)
        self.buf = torch.empty_like(param)
        self.beta1, self.beta2 = optim.betas
        self.eps, self.wd, self.decoupled = optim.eps, optim.weight_decay, optim.name == "adamw"

    def step(self, grad: torch.Tensor, t: int) -> None:
        if self.wd and not self.decoupled:
            grad.add_(self.p, alpha=self.wd)
        self.m.lerp_(grad, 1 - self.beta1)
        self.v.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        bias1 = 1 - self.beta1**t
        bias2_sqrt = math.sqrt(1 - self.beta2**t)
        torch.sqrt(self.v, out=self.buf).div_(bias2_sqrt).add_(self.eps)
        torch.div(self.m, self.buf, out=self.buf)
        if self.wd and self.decoupled:
            self.p.mul_(1 - self.lr * self.wd)
        self.p.sub_(self.buf.mul_(self.lr / bias1))

    def keep(self, idx: torch.Tensor) -> None:
        for name in ("m", "v", "buf"):
            setattr(self, name, getattr(self, name)[idx].contiguous())


def _steps_set(every: int, extra: Sequence[int], steps: int) -> set[int]:
    out = {s for s in extra if 0 <= s <= steps}
    if every:
        out.update(range(0, steps + 1, every))
    return out


BLOCK_BYTES = 1 << 18  # per configuration: rows of P processed at once (~256 KB each)
MIN_ROWS = 16  # at least this many rows a block: 8-row blocks ran at half speed (n = 8192; n = 4096 with 128 KB)
GPU_BLOCK_BYTES = 1 << 26  # on an accelerator: 64 MB blocks (few kernel launches, no cache to fit)


def block_rows(n: int, n_train: int, itemsize: int, device_type: str = "cpu") -> int:
    """Data rows per block, so that one configuration's block of P is ~``BLOCK_BYTES``
    (``GPU_BLOCK_BYTES`` off the CPU).

    It depends on the width, dtype and device only, never on how many configurations share the
    pack: the summation order of every loss and gradient is then the same in any pack.
    """
    size = BLOCK_BYTES if device_type == "cpu" else GPU_BLOCK_BYTES
    return max(min(MIN_ROWS, n_train), min(n_train, (size // max(1, n * itemsize)) // 8 * 8))


class _Pass:
    """One fused, row-blocked forward (+ backward) over the training data for k live configs.

    Works on transposed blocks (rows last, so the rank-r GEMMs write and read long (n, m) panels,
    about 1.7x faster on CPU than the (m, n) layout at n = 1024). Zᵀ = A_cat·Hᵀ is one GEMM for
    the whole step; then for each block of m rows, Pᵀ = G_blkᵀ + B·αZᵀ (G's blocks stored
    transposed and contiguous), Rᵀ = relu(Pᵀ), yᵀ = W_out·Rᵀ, residual, then Mᵀ = 1[Pᵀ > 0]
    (``sign_``: R ≥ 0) and, since dP = M ⊙ (res·W_out), ∇Bt += Σ_o w_o ⊙ ((αZᵀ ⊙ res_o) M) and
    dZᵀ = α Σ_o res_o ⊙ ((Bt ⊙ w_o) Mᵀ) into a (k r, N) buffer; ∇A_cat = dZᵀ H is again one GEMM.
    H and G are read once per step for all k configs, P never leaves the cache, no (k, N, n)
    tensor exists, and every operation is separable per config (a config's numbers do not
    depend on the others).
    """

    def __init__(self, frozen: FrozenParts, k: int, r: int) -> None:
        self.h, self.w_out = frozen.h_train, frozen.w_out
        self.n_train, self.n = self.h.shape
        self.d_out = self.w_out.shape[0]
        self.r = r
        dtype, device = self.h.dtype, self.h.device
        self.rows = block_rows(self.n, self.n_train, self.h.element_size(), device.type)
        self.blocks = [(i0, min(self.n_train, i0 + self.rows)) for i0 in range(0, self.n_train, self.rows)]
        g = frozen.g_train
        self.g_t = None if g is None else [g[i0:i1].T.contiguous() for i0, i1 in self.blocks]  # (n, m) each
        self.y_t = frozen.y_train.T.contiguous()  # (d_out, N)
        self.p_flat = torch.empty(k * self.rows * self.n, dtype=dtype, device=device)
        self.zt = torch.empty(k * r, self.n_train, dtype=dtype, device=device)  # Zᵀ of the whole step (for norms)
        self.dzt = torch.empty(k * r, self.n_train, dtype=dtype, device=device)  # dL/dZᵀ of the whole step

    def run(self, a, bt, alpha, backward: bool):
        """Loss per config (k,) and, with ``backward``, (∇A, ∇Bt), each (k, r, n)."""
        kk, r, n = a.shape
        d_out, scale = self.d_out, 2.0 / (self.n_train * self.d_out)
        a_cat = a.view(kk * r, n)
        b = bt.transpose(1, 2).contiguous()  # (k, n, r)
        loss = torch.zeros(kk, dtype=a.dtype, device=a.device)
        zt = torch.mm(a_cat, self.h.T, out=self.zt[: kk * r])  # (k r, N): one GEMM for all blocks
        dzt = self.dzt[: kk * r]
        if backward:
            grad_bt = torch.zeros(kk, d_out * r, n, dtype=a.dtype, device=a.device)
            bw = (bt.unsqueeze(1) * self.w_out.view(1, d_out, 1, n)).view(kk, d_out * r, n)
        w_exp = self.w_out.expand(kk, d_out, n)
        for j, (i0, i1) in enumerate(self.blocks):
            m = i1 - i0
            zs = zt[:, i0:i1].view(kk, r, m) * alpha  # α Zᵀ, (k, r, m)
            p = self.p_flat[: kk * n * m].view(kk, n, m)  # Pᵀ
            if self.g_t is None:
                torch.bmm(b, zs, out=p)
            else:
                torch.baddbmm(self.g_t[j].expand(kk, n, m), b, zs, out=p)
            p.relu_()
            res = torch.bmm(w_exp, p).sub_(self.y_t[:, i0:i1])  # yᵀ - y*ᵀ, (k, d_out, m)
            loss.add_(res.square().sum(dim=(1, 2)))
            if not backward:
                continue
            p.sign_()  # Mᵀ = 1[Pᵀ > 0] (NaN stays NaN)
            res.mul_(scale)  # ∂L/∂yᵀ
            zr = (zs.unsqueeze(1) * res.unsqueeze(2)).view(kk, d_out * r, m)
            grad_bt.baddbmm_(zr, p.transpose(1, 2))
            mb = torch.bmm(bw, p).view(kk, d_out, r, m)
            dz = (mb * res.unsqueeze(2)).sum(dim=1) if d_out > 1 else mb.view(kk, r, m).mul_(res)  # (k, r, m)
            torch.mul(dz, alpha, out=dzt[:, i0:i1].view(kk, r, m))
        loss.div_(self.n_train * d_out)
        if not backward:
            return loss, None, None
        grad_a = dzt @ self.h  # (k r, n): one GEMM for all blocks
        grad_bt = grad_bt.view(kk, d_out, r, n).mul_(self.w_out.view(1, d_out, 1, n)).sum(dim=1)
        return loss, grad_a.view(kk, r, n), grad_bt


def train_lora_chunk(frozen: FrozenParts, configs: Sequence[SyntheticSpec], *, steps_before: int = 0,
                     steps_total: int | None = None) -> list[ChunkOutcome]:
    """Train ``configs`` (one pack key, same data seed) together; one outcome per config, in order.

    Heartbeats (:mod:`loradyn.tasks.pulse`) count configuration-steps: ``steps_before`` + steps ×
    configurations done, of ``steps_total``."""
    cfg0 = configs[0]
    train = cfg0.train
    dtype, device = frozen.h_train.dtype, frozen.h_train.device
    w_out = frozen.w_out
    n_train = frozen.h_train.shape[0]
    k = len(configs)
    r = cfg0.lora.rank

    inits = [init_student(c) for c in configs]  # drawn on the CPU, then moved
    a = torch.stack([ai for ai, _ in inits]).contiguous().to(device)  # (k, r, n)
    bt = torch.stack([bi.T for _, bi in inits]).contiguous().to(device)  # (k, r, n) = Bᵀ
    col = lambda vals: torch.tensor(vals, dtype=dtype, device=device).view(-1, 1, 1)  # noqa: E731
    alpha = col([c.lora.alpha for c in configs])
    opt_a = _Adam(a, col([c.optim.lr_a for c in configs]), cfg0.optim)
    opt_b = _Adam(bt, col([c.optim.lr_b for c in configs]), cfg0.optim)
    engine = _Pass(frozen, k, r)

    live = list(range(k))  # original index of each live row
    outcomes = [ChunkOutcome() for _ in configs]
    probe_steps = _steps_set(train.record_every, train.record_steps, train.steps)
    curve_steps = _steps_set(train.curve_every, (train.steps,) if train.curve_every else (), train.steps)
    initial: list[float] = [math.nan] * k
    threshold = None
    alarm = train.alarm
    monitors = [AlarmMonitor(alarm) for _ in configs]
    h_rms = float((frozen.h_train.norm(dim=1) / math.sqrt(frozen.h_train.shape[1])).mean()) if alarm.enabled else 0.0

    def finish(rows: list[int], t: int, losses: list[float], status: str) -> None:
        """Final metrics for live rows ``rows`` (positions in the stack) at step t."""
        idx = torch.tensor(rows, dtype=torch.long, device=device)
        a_s, bt_s, al_s = a[idx], bt[idx], alpha[idx]
        test = eval_loss(a_s, bt_s, al_s, frozen.h_test, frozen.g_test, frozen.y_test, w_out).tolist()
        norms = _norm_rows(engine.zt.view(-1, r, n_train)[idx], bt_s, al_s, t)
        for j, pos in enumerate(rows):
            o = outcomes[live[pos]]
            o.status = status
            o.diverged_step = t if status == "diverged" else -1
            loss = losses[pos]
            o.metrics.update({
                "final_train_loss": loss if math.isfinite(loss) else math.inf,
                "test_loss": test[j] if math.isfinite(test[j]) else math.inf,
                "initial_train_loss": initial[live[pos]],
                "diverged_step": float(o.diverged_step),
            })
            for rec in norms[j]:
                if rec["feature"] in ("z_a", "z_b"):
                    o.metrics[f"{rec['feature']}_{rec['stat']}"] = rec["value"]
            o.lora_A = a_s[j].clone().cpu()
            o.lora_B = bt_s[j].T.clone().cpu()
            o.alarm = monitors[live[pos]].alarm

    for t in range(train.steps + 1):
        report_steps(steps_before + t * len(configs), steps_total or train.steps * len(configs))
        kk = len(live)
        loss_t, grad_a, grad_bt = engine.run(a, bt, alpha, backward=t < train.steps)
        losses = loss_t.tolist()
        if t == 0:
            for pos, i in enumerate(live):
                initial[i] = losses[pos]
            threshold = loss_t * train.blowup_factor
        if t in probe_steps:
            for pos, rows in enumerate(_norm_rows(engine.zt[: kk * r].view(kk, r, n_train), bt, alpha, t)):
                outcomes[live[pos]].probes.extend(rows)
        if t in curve_steps:
            test_t = eval_loss(a, bt, alpha, frozen.h_test, frozen.g_test, frozen.y_test, w_out).tolist()
            for pos, i in enumerate(live):
                outcomes[i].curves.append({"step": t, "metric": "train_loss", "value": losses[pos]})
                outcomes[i].curves.append({"step": t, "metric": "test_loss", "value": test_t[pos]})
        # ---- divergence and the alarm: freeze before the update ----
        bad = ~torch.isfinite(loss_t) | (loss_t > threshold)
        if alarm.enabled:
            stats = _alarm_stats(engine.zt[: kk * r].view(kk, r, n_train), a, bt, alpha, h_rms,
                                 frozen.w_star_norm) if alarm.checks(t) else [({}, None)] * kk
            for pos, (feats, upd) in enumerate(stats):
                if monitors[live[pos]].check(t, loss=losses[pos], features={MODULE: feats} if feats else None,
                                             updates=None if upd is None else {MODULE: upd}) is not None:
                    bad[pos] = True
        if bool(bad.any()):
            finish(bad.nonzero().view(-1).tolist(), t, losses, "diverged")
            keep = (~bad).nonzero().view(-1)
            keep_list = keep.tolist()
            if not keep_list:
                break
            a, bt, alpha, threshold = (x[keep].contiguous() for x in (a, bt, alpha, threshold))
            engine.zt[: len(keep_list) * r] = engine.zt[: kk * r].view(kk, r, n_train)[keep].reshape(-1, n_train)
            opt_a.p, opt_b.p = a, bt
            opt_a.lr, opt_b.lr = opt_a.lr[keep].contiguous(), opt_b.lr[keep].contiguous()
            opt_a.keep(keep)
            opt_b.keep(keep)
            losses = [losses[j] for j in keep_list]
            live = [live[j] for j in keep_list]
            if grad_a is not None:
                grad_a, grad_bt = grad_a[keep].contiguous(), grad_bt[keep].contiguous()
        if t == train.steps:
            finish(list(range(len(live))), t, losses, "done")
            break
        opt_a.step(grad_a, t + 1)
        opt_b.step(grad_bt, t + 1)
    return outcomes


def train_full(frozen: FrozenParts, config: SyntheticSpec, *, steps_before: int = 0,
               steps_total: int | None = None) -> ChunkOutcome:
    """Full finetuning of the adapted matrix with Adam at ``optim.lr_a``: P = G + H·ΔWᵀ with ΔW from 0
    (W* + ΔW in the ``hidden`` form; a full-rank residual branch ``z + ΔW·φ(z)`` in the ``residual`` form)."""
    train = config.train
    h, g, y_star, w_out = frozen.h_train, frozen.g_train, frozen.y_train, frozen.w_out
    n_train, n = h.shape
    d_out = w_out.shape[0]
    dw = torch.zeros(1, n, n, dtype=h.dtype, device=h.device)
    opt = _Adam(dw, torch.tensor(config.optim.lr_a, dtype=h.dtype, device=h.device).view(1, 1, 1), config.optim)
    out = ChunkOutcome()
    curve_steps = _steps_set(train.curve_every, (train.steps,) if train.curve_every else (), train.steps)
    threshold = None

    def fwd(hh, gg):
        p = hh @ dw[0].T
        if gg is not None:
            p += gg
        p.relu_()
        return p, p @ w_out.T

    for t in range(train.steps + 1):
        report_steps(steps_before + t, steps_total or train.steps)
        p, y = fwd(h, g)
        res = y - y_star
        loss = float(res.square().mean())
        if t == 0:
            out.metrics["initial_train_loss"] = loss
            threshold = train.blowup_factor * loss
        if t in curve_steps:
            test = float((fwd(frozen.h_test, frozen.g_test)[1] - frozen.y_test).square().mean())
            out.curves += [
                {"step": t, "metric": "train_loss", "value": loss},
                {"step": t, "metric": "test_loss", "value": test},
            ]
        bad = not math.isfinite(loss) or loss > threshold
        if bad or t == train.steps:
            test = float((fwd(frozen.h_test, frozen.g_test)[1] - frozen.y_test).square().mean())
            out.status = "diverged" if bad else "done"
            out.diverged_step = t if bad else -1
            out.metrics.update({
                "final_train_loss": loss if math.isfinite(loss) else math.inf,
                "test_loss": test if math.isfinite(test) else math.inf,
                "diverged_step": float(out.diverged_step),
            })
            break
        d = (res * (2.0 / (n_train * d_out))) @ w_out
        torch.ops.aten.threshold_backward.grad_input(d, p, 0, grad_input=d)
        opt.step((d.T @ h).unsqueeze(0), t + 1)
    out.metrics["delta_w_rms"] = float(dw.square().mean().sqrt())
    return out
