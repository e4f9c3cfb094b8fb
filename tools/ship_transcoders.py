"""Ship a trained transcoder set with avec: ``python tools/ship_transcoders.py RUN_DIR NAME --command "..."``.

Reads ``RUN_DIR`` (what ``avec transcoder train --out RUN_DIR`` wrote: ``plt.safetensors`` or ``clt.safetensors``,
``eval.json``, ``metrics.jsonl``), writes ``avec/dictionaries/shipped/NAME.safetensors`` (weights fp16, JumpReLU
thresholds kept fp32) and ``NAME.json`` (command, code commit, data, training time and per-layer metrics), then
measures the shipped fp16 weights again on held-out documents, so that the record describes the file users load.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def fp16_copy(src: Path, dst: Path, bos: int | None) -> None:
    """``src`` (an avec transcoder file) rewritten with fp16 weights; thresholds stay fp32; ``bos``: the token
    the training contexts began with, recorded in the config (files trained before the config had the field)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from avec.dictionaries.transcoder import TranscoderConfig
    from avec.io import atomic_write

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    cfg = TranscoderConfig.from_dict(json.loads(meta["config"]), source=str(src))
    meta["config"] = json.dumps({**cfg.to_dict(), "dtype": "float16", "bos": bos if bos is not None else cfg.bos})
    out = {k: (v if k == "threshold" else v.to(torch.float16)).contiguous() for k, v in tensors.items()}
    atomic_write(dst, lambda tmp: save_file(out, tmp, metadata=meta))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("name")
    ap.add_argument("--command", required=True, help="the exact training command that made RUN_DIR")
    ap.add_argument("--code-commit", required=True, help="the avec commit the training ran")
    ap.add_argument("--eval-tokens", type=int, default=32768)
    ap.add_argument("--eval-contexts", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from avec.app.cli.transcoders import _heldout_eval, _metrics
    from avec.dictionaries.shipped import SHIPPED_DIR, load_shipped
    from avec.models import load

    run = args.run_dir
    ev = json.loads((run / "eval.json").read_text())
    src = run / f"{ev['kind']}.safetensors"
    dst = SHIPPED_DIR / f"{args.name}.safetensors"
    fp16_copy(src, dst, ev["train"].get("bos"))
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]

    lm = load(ev["model"])
    tc = load_shipped(args.name)
    t = time.time()
    res, data = _heldout_eval(lm, tc, ev["eval"]["corpus"], 2, ev["train"]["context"], args.eval_tokens,
                              args.eval_contexts, bool(ev["train"]["bos"]))
    data["seconds"] = round(time.time() - t, 1)
    rec = {
        "name": args.name, "file": dst.name, "kind": "transcoders",
        "dtype": "float16 weights, float32 thresholds (trained in float32; load_shipped casts back to float32)",
        "model": ev["model"], "model_id": ev["model_id"],
        "structure": {"kind": ev["kind"], "reads": ev["reads"], "writes": ev["writes"], "layers": ev["layers"],
                      "arch_trained": ev["arch"], "arch_saved": tc.cfg.arch, "width": ev["width"], "k": ev["k"],
                      "skip": ev["skip"]},
        "command": args.command, "code_commit": args.code_commit,
        "data": ev["train"],
        "training": {"seconds": ev["train"].get("seconds_this_run"), "machine": f"2 CPU cores, torch threads "
                     f"{args.command.split('--threads')[1].split()[0] if '--threads' in args.command else '?'}, no GPU",
                     "last_logged_batch": {k: v for k, v in log[-1].items() if not k.endswith("per_layer")}},
        "metrics_held_out_at_training_end": ev["metrics"],
        "metrics_held_out": {**_metrics(res), "evaluated": data,
                             "what": "the shipped fp16 weights cast to float32, re-measured; CE / KL / top-1 agreement "
                                     "are the replacement model's: every MLP output replaced by its reconstruction"},
        "size_bytes": dst.stat().st_size,
    }
    (SHIPPED_DIR / f"{args.name}.json").write_text(json.dumps(rec, indent=2) + "\n")
    m = rec["metrics_held_out"]
    print(f"{dst} ({dst.stat().st_size / 2**20:.1f} MiB): mean FVU {m['mean_fvu']:.3f}, CE recovered "
          f"{m.get('ce_loss_recovered')}, KL {m.get('kl')}, top-1 agreement {m.get('top1_agreement')}")


if __name__ == "__main__":
    main()
