"""GPU check: the devices, precisions and executors of loradyn on a real GPU (never required by CI).

Without CUDA it prints "no GPU: nothing checked" and exits 0, so it is safe to run anywhere. With
CUDA it runs, and prints one table row per check:

1. the synthetic engine on CUDA against the CPU result, float64 (LoRA packs, Init[A]/Init[B],
   every α rule, and full finetuning): final losses, test losses and adapter weights within
   ``RTOL_F64`` (relative, the bound of ``tests/synthetic/test_device.py``); float32 is reported;
2. the synthetic engine at a width far beyond the CPU's (``--wide``, default 65,536; the residual form
   (no n × n matrix W*), or the hidden form with W* with ``--wide-w-star``), timed;
3. small ``hf-classify`` and ``hf-sft`` sweeps (tiny random BERT / Llama models and data written
   here, nothing downloaded) on CUDA with bf16 autocast and gradient accumulation (the sft one
   greedy-decodes on the GPU for exact match), and one hf-classify trial in fp32 on CUDA against the
   CPU (``RTOL_HF_FP32``);
4. the process executor on all GPUs: ``loradyn sweep --gpus all`` when the CLI has that option,
   else ``--executor process`` with ``--workers`` processes sharing the visible GPU(s) (the table
   says which).

It exits 1 when a check fails or mismatches, and writes benchmarks/results/gpu_check.json only when it
ran on a GPU. ``--self-test`` runs every check with the CPU standing in for the GPU (to try the
script on a machine without one; nothing written).

Usage: python benchmarks/gpu_check.py [--wide 65536] [--wide-w-star] [--workers 2] [--self-test]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RTOL_F64 = 1e-9  # synthetic engine, float64, CUDA vs CPU: only the summation order differs
RTOL_F32_INFO = 1e-3  # float32: reported, not a failure
RTOL_HF_FP32 = 1e-4  # tiny BERT, fp32 (TF32 off: torch's default), CUDA vs CPU, a few AdamW steps
WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega good bad film what is plus Question Answer ? : .").split()


class Table:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, check: str, device: str, result: str, ok: bool | None, **extra) -> None:
        self.rows.append({"check": check, "device": device, "result": result,
                          "ok": "info" if ok is None else ("ok" if ok else "FAIL"), **extra})
        print(f"  {self.rows[-1]['ok']:<4} {check}: {result}", flush=True)

    def failed(self) -> bool:
        return any(r["ok"] == "FAIL" for r in self.rows)

    def show(self) -> None:
        widths = [max(len(str(r[k])) for r in self.rows + [{"check": "check", "device": "device",
                                                           "result": "result", "ok": "ok"}])
                  for k in ("check", "device", "ok")]
        print(f"\n{'check':<{widths[0]}}  {'device':<{widths[1]}}  {'ok':<{widths[2]}}  result")
        for r in self.rows:
            print(f"{r['check']:<{widths[0]}}  {r['device']:<{widths[1]}}  {r['ok']:<{widths[2]}}  {r['result']}")


def _rel(a, b) -> float:
    import torch

    a, b = torch.as_tensor(a, dtype=torch.float64).cpu(), torch.as_tensor(b, dtype=torch.float64).cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


# --- 1, 2: the synthetic engine ------------------------------------------------------------------

def _synthetic_configs(dtype: str, device: str):
    from loradyn.synthetic import SyntheticSpec

    mixes = [("A", "1", 2e-2, 4.0, 0), ("B", "1", 5e-3, 1.0, 1), ("A", "1/sqrt(r)", 4e-3, 16.0, 2),
             ("B", "1/r", 1e-2, 0.5, 3), ("A", "1/r", 1e-2, 8.0, 4), ("B", "1/sqrt(r)", 2e-3, 32.0, 5)]
    lora = [SyntheticSpec.from_dict({
        "task": {"width": 512, "n_train": 1000, "n_test": 200, "data_seed": 7},
        "lora": {"init": init, "alpha_rule": rule, "rank": 4},
        "optim": {"lr_a": lr, "lr_ratio": ratio},
        "train": {"steps": 60, "dtype": dtype, "device": device, "record_every": 20},
        "seed": seed}) for init, rule, lr, ratio, seed in mixes]
    full = SyntheticSpec.from_dict({
        "task": {"width": 256, "n_train": 500, "n_test": 100, "data_seed": 7}, "lora": {"method": "full"},
        "optim": {"lr_a": 1e-3}, "train": {"steps": 40, "dtype": dtype, "device": device}})
    return lora + [full]


def check_synthetic(table: Table, gpu: str) -> None:
    from loradyn.synthetic import clear_cache, run_pack

    for dtype, tol in (("float64", RTOL_F64), ("float32", RTOL_F32_INFO)):
        runs = {}
        for device in ("cpu", gpu):
            clear_cache()
            t0 = time.perf_counter()
            results, params = run_pack(_synthetic_configs(dtype, device), return_params=True)
            runs[device] = (results, params, time.perf_counter() - t0)
        (ref, ref_p, t_cpu), (res, res_p, t_gpu) = runs["cpu"], runs[gpu]
        bad = [r.error or r.status for r in ref + res if r.status != "done"]
        worst = 0.0
        for a, b in zip(ref, res):
            for key in ("final_train_loss", "test_loss"):
                x, y = a.metrics.get(key, math.nan), b.metrics.get(key, math.nan)
                worst = max(worst, abs(x - y) / max(abs(x), 1e-300) if math.isfinite(x) and math.isfinite(y) else math.inf)
            for pa, pb in zip(a.probes, b.probes):
                worst = max(worst, abs(pa["value"] - pb["value"]) / max(abs(pa["value"]), 1e-300))
        for pa, pb in zip(ref_p, res_p):
            if pa is not None:
                worst = max(worst, _rel(pb[0], pa[0]), _rel(pb[1], pa[1]))
        ok = None if dtype == "float32" else (not bad and worst <= tol)
        table.add(f"synthetic {dtype} vs cpu (6 LoRA + 1 full)", gpu,
                  f"max rel diff {worst:.2e} (tol {tol:.0e}); cpu {t_cpu:.2f} s, {gpu} {t_gpu:.2f} s"
                  + (f"; errors: {bad[:1]}" if bad else ""), ok, max_rel_diff=worst, tolerance=tol,
                  cpu_seconds=t_cpu, device_seconds=t_gpu)


def check_wide(table: Table, gpu: str, width: int, w_star: bool) -> None:
    from loradyn.synthetic import SyntheticSpec, clear_cache, run_pack, seconds_per_step

    clear_cache()
    steps, k = 20, 8
    configs = [SyntheticSpec.from_dict({
        "task": {"width": width, "n_train": 1000, "form": "hidden" if w_star else "residual", "data_seed": 1},
        "lora": {"init": "A", "rank": 4}, "optim": {"lr_a": lr * width ** -0.5, "lr_ratio": 4.0},
        "train": {"steps": steps, "dtype": "float32", "device": gpu}}) for lr in (0.25, 0.5, 1, 2, 4, 8, 16, 32)]
    t0 = time.perf_counter()
    results = run_pack(configs)
    seconds = time.perf_counter() - t0
    ok = all(r.status in ("done", "diverged") for r in results) and any(r.status == "done" for r in results)
    finite = [r.metrics.get("final_train_loss") for r in results if r.status == "done"]
    cpu_estimate = k * steps * seconds_per_step(width)
    table.add(f"synthetic wide n={width:,}{' with W*' if w_star else ' (residual form, no W*)'}, {k} configs x {steps} steps", gpu,
              f"{seconds:.1f} s incl. setup ({k * steps / seconds:.0f} config-steps/s; one CPU core: ~{cpu_estimate:.0f} s); "
              f"statuses {sorted({r.status for r in results})}, best loss {min(finite) if finite else math.nan:.3g}"
              + (f"; {results[0].error}" if results[0].error else ""), ok, seconds=seconds)


# --- 3: hf-classify and hf-sft -------------------------------------------------------------------

def _tokenizer(folder: Path, bert: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "</s>"]
    vocab = {w: i for i, w in enumerate(specials + [str(i) for i in range(100)] + list(dict.fromkeys(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    if bert:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", eos_token="</s>")
    fast.save_pretrained(folder)
    return len(vocab)


def _tiny_models(root: Path) -> tuple[Path, Path]:
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        LlamaConfig,
        LlamaForCausalLM,
    )

    bert, llama = root / "tiny-bert", root / "tiny-llama"
    torch.manual_seed(0)
    n = _tokenizer(bert, bert=True)
    BertForSequenceClassification(BertConfig(vocab_size=n, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                             intermediate_size=128, max_position_embeddings=128)).save_pretrained(bert)
    n = _tokenizer(llama, bert=False)
    LlamaForCausalLM(LlamaConfig(vocab_size=n, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256,
                                 pad_token_id=0, eos_token_id=4, bos_token_id=None,
                                 tie_word_embeddings=True)).save_pretrained(llama)
    return bert, llama


def _data(root: Path) -> tuple[Path, Path]:
    import random

    rng = random.Random(0)
    greek = WORDS[:24]
    classify = root / "reviews.jsonl"
    with classify.open("w") as fh:
        for i in range(160):
            label = i % 2
            words = [rng.choice(greek) for _ in range(rng.randint(4, 20))] + ["good" if label else "bad"]
            rng.shuffle(words)
            fh.write(json.dumps({"text": " ".join(words), "label": ["neg", "pos"][label]}) + "\n")
    sft = root / "sums.jsonl"
    with sft.open("w") as fh:
        for _ in range(120):
            a, b = rng.randint(0, 49), rng.randint(0, 49)
            fh.write(json.dumps({"prompt": f"what is {a} plus {b} ?", "completion": str(a + b)}) + "\n")
    return classify, sft


def _hf_sweep(kind: str, model: Path, data: Path, task: dict, train: dict, out: Path):
    from loradyn.sweep import run_sweep

    spec = {"name": f"gpu-check-{kind}", "metric": "val_loss", "mode": "min",
            "base": {"task": {"kind": kind, "model": str(model), "data": str(data), **task},
                     "lora": {"rank": 4, "target_modules": ["all-linear"]},
                     "train": {"steps": 6, "batch_size": 8, "eval_batch_size": 16, "data_order_seed": 0,
                               "pack": "pack", **train}},
            "grid": {"lora.init": ["A", "B"], "optim.lr_a": [1e-3, 1e-2]}}
    return run_sweep(spec, out, executor="serial", quiet=True)


def check_hf(table: Table, gpu: str, root: Path) -> None:
    try:
        import datasets  # noqa: F401
        import peft  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as err:
        table.add("hf-classify / hf-sft sweeps", gpu, f"not run: {err} (pip install 'loradyn[hf]')", False)
        return
    bert, llama = _tiny_models(root)
    classify, sft = _data(root)
    bf16 = {"device": gpu, "precision": "bf16", "grad_accum": 2}
    runs = [("hf-classify", bert, classify, {"columns": {"text": "text", "label": "label"}, "max_length": 32,
                                             "n_val": 24, "n_test": 24}, "val_accuracy"),
            ("hf-sft", llama, sft, {"columns": {"prompt": "prompt", "completion": "completion"}, "max_length": 32,
                                    "n_val": 12, "n_test": 12, "exact_match": True, "max_new_tokens": 4},
             "val_exact_match")]
    for kind, model, data, task, extra_metric in runs:
        t0 = time.perf_counter()
        try:
            df = _hf_sweep(kind, model, data, task, bf16, root / f"sweep-{kind}")
        except Exception as err:  # noqa: BLE001 - a check, reported
            table.add(f"{kind} sweep bf16 grad_accum 2", gpu, f"{type(err).__name__}: {err}".splitlines()[0], False)
            continue
        seconds = time.perf_counter() - t0
        done = int((df["status"] == "done").sum())
        errors = sorted(set(df["error"].dropna()))
        finite = bool(df["val_loss"].map(lambda v: math.isfinite(v)).all()) if "val_loss" in df else False
        has_metric = extra_metric in df and df[extra_metric].notna().all()
        table.add(f"{kind} sweep bf16 grad_accum 2", gpu,
                  f"{done}/{len(df)} done, val_loss {df['val_loss'].min():.3f}..{df['val_loss'].max():.3f}, "
                  f"{extra_metric} {'reported' if has_metric else 'MISSING'}, {seconds:.1f} s"
                  + (f"; {errors[0]}" if errors else ""), done == len(df) and finite and has_metric, seconds=seconds)
    # fp32 on the GPU against the CPU, one trial
    from loradyn.serialize import spec_from_dict
    from loradyn.tasks.registry import get_task

    record = get_task("hf-classify")
    metrics = {}
    for device in ("cpu", gpu):
        config = spec_from_dict(record.spec_cls, {
            "task": {"kind": "hf-classify", "model": str(bert), "data": str(classify), **runs[0][3]},
            "lora": {"rank": 4, "target_modules": ["all-linear"]}, "optim": {"lr_a": 1e-2},
            "train": {"steps": 6, "batch_size": 8, "device": device, "pack": "solo"}})
        record.validate(config)
        [result] = record.run_pack([config])
        metrics[device] = result.metrics if result.status == "done" else {"error": result.error}
    if "error" in metrics["cpu"] or "error" in metrics[gpu]:
        table.add("hf-classify fp32 vs cpu", gpu, f"{metrics['cpu'].get('error')} / {metrics[gpu].get('error')}", False)
    else:
        worst = max(abs(metrics[gpu][k] - metrics["cpu"][k]) / max(abs(metrics["cpu"][k]), 1e-300)
                    for k in ("final_train_loss", "val_loss", "test_loss"))
        table.add("hf-classify fp32 vs cpu", gpu, f"max rel diff {worst:.2e} (tol {RTOL_HF_FP32:.0e})",
                  worst <= RTOL_HF_FP32, max_rel_diff=worst, tolerance=RTOL_HF_FP32)


# --- 4: the process executor ---------------------------------------------------------------------

def check_process_executor(table: Table, gpu: str, root: Path, workers: int) -> None:
    from loradyn.sweep import load_results

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    cli = [sys.executable, "-m", "loradyn"]
    helptext = subprocess.run(cli + ["sweep", "--help"], capture_output=True, text=True, env=env).stdout
    spec = root / "synthetic-sweep.json"
    spec.write_text(json.dumps({
        "name": "gpu-check-process", "metric": "final_train_loss", "mode": "min",
        "base": {"task": {"kind": "synthetic", "width": 4096, "n_train": 1000},
                 "train": {"steps": 100, "device": "auto" if gpu != "cpu" else "cpu"}},
        "grid": {"optim.lr_a": [1e-4, 3e-4, 1e-3, 3e-3], "lora.init": ["A", "B"]}, "seeds": [0, 1]}))
    if "--gpus" in helptext:
        how, extra = "--gpus all", ["--gpus", "all"]
    else:
        how, extra = f"--executor process --workers {workers} (this CLI has no --gpus)", \
            ["--executor", "process", "--workers", str(workers)]
    out = root / "process-sweep"
    t0 = time.perf_counter()
    proc = subprocess.run(cli + ["sweep", str(spec), "--out", str(out), "--quiet", *extra],
                          capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0 or not (out / "sweep.db").exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        table.add(f"process executor: loradyn sweep {how}", gpu, f"exit {proc.returncode}: {tail[0]}", False)
        return
    df = load_results(out)
    done = int((df["status"] == "done").sum())
    table.add(f"process executor: loradyn sweep {how}", gpu,
              f"{done}/{len(df)} synthetic trials done (n=4096, 100 steps) in {seconds:.1f} s",
              done == len(df) == 16, seconds=seconds, how=how)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wide", type=int, default=65536, help="width of the wide synthetic run (0: skip)")
    ap.add_argument("--wide-w-star", action="store_true", help="keep W* (n x n, drawn on the CPU: minutes at 65,536)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes when the CLI has no --gpus")
    ap.add_argument("--self-test", action="store_true", help="the CPU stands in for the GPU; nothing written")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu_check.json"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch

    if not torch.cuda.is_available() and not args.self_test:
        print("no GPU: nothing checked")
        return 0
    gpu = "cpu" if args.self_test else "cuda"
    name = torch.cuda.get_device_name() if gpu == "cuda" else "cpu (self-test)"
    torch.set_num_threads(max(1, min(16, os.cpu_count() or 1)))
    print(f"gpu_check on {name}, torch {torch.__version__}", flush=True)
    table = Table()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ.setdefault("LORADYN_CACHE", str(root / "cache"))
        for check in (lambda: check_synthetic(table, gpu),
                      lambda: args.wide and check_wide(table, gpu, args.wide if gpu == "cuda" else 2048,
                                                       args.wide_w_star),
                      lambda: check_hf(table, gpu, root),
                      lambda: check_process_executor(table, gpu, root, args.workers)):
            try:
                check()
            except Exception as err:  # noqa: BLE001 - one broken check does not hide the others
                table.add("(check crashed)", gpu, f"{type(err).__name__}: {err}".splitlines()[0], False)
    table.show()
    if gpu == "cuda":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            "device": name, "torch": torch.__version__, "python": platform.python_version(),
            "measured": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": table.rows}, indent=2) + "\n")
        print(f"wrote {args.out}")
    print("FAILED" if table.failed() else "all checks passed")
    return 1 if table.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
