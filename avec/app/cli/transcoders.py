"""CLI commands of transcoders: ``avec transcoder train | eval | export | import``. ``register(app)`` adds them.

    avec transcoder train --model smollm2 --kind clt --layers all --arch batchtopk --width 256 --k 16 \\
                          --tokens 200000 --out runs/clt

``--kind clt`` trains a cross-layer transcoder (layer l's features decode to layer l and every later
layer), ``--kind plt`` a set of per-layer transcoders (one per layer, trained together). The activation
store collects every chosen layer's input (``--reads``, default ``resid_mid``) and target (``--writes``,
default ``mlp_out``) in one forward pass. Held-out documents, shuffling, resuming and the BOS rule are
those of ``avec sae train`` (``avec.dictionaries.cli``). ``OUT/eval.json`` records the training command's
settings and the held-out per-layer FVU, L0 and dead fraction, and the CE loss recovered / KL / top-1
agreement of the model with every chosen MLP output replaced by its reconstruction.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer

from ...io import atomic_write_json, check_out_option
from .dictionaries import PREPEND_BOS_HELP, check_training_options, training_stream, train_from_store
from ...dictionaries.heldout import evaluate_transcoder_heldout, prepend_bos_default as _prepend_bos

ARCHS = ("relu", "jumprelu", "topk", "batchtopk")
KINDS = ("clt", "plt")


def parse_layers(spec: str, n_layers: int) -> list[int]:
    """``all``, ``3``, ``0-9`` (inclusive) or ``0,2,5`` -> sorted distinct layer indices, each in range."""
    spec = spec.strip()
    if spec == "all":
        return list(range(n_layers))
    layers: set[int] = set()
    try:
        for part in spec.split(","):
            part = part.strip()
            if "-" in part:
                a, b = (int(p) for p in part.split("-", 1))
                if b < a:
                    raise ValueError
                layers.update(range(a, b + 1))
            else:
                layers.add(int(part))
    except ValueError:
        raise typer.BadParameter(f"{spec!r}: give 'all', a layer (3), a range (0-9) or a list (0,2,5)",
                                 param_hint="--layers") from None
    bad = sorted(l for l in layers if not 0 <= l < n_layers)
    if bad or not layers:
        raise typer.BadParameter(f"layers {bad or spec} out of range: the model has {n_layers} layers (0..{n_layers - 1})",
                                 param_hint="--layers")
    return sorted(layers)


def _summary(m: dict) -> str:
    fvu = ", ".join(f"{f:.3f}" for f in m["fvu"])
    return (f"mean FVU {m['mean_fvu']:.3f} (per layer: {fvu}); mean L0 {sum(m['l0']) / len(m['l0']):.1f}; "
            f"dead {sum(m['dead_fraction']) / len(m['dead_fraction']):.3f}; CE loss recovered "
            f"{m.get('ce_loss_recovered', float('nan')):.3f}, KL {m.get('kl', float('nan')):.3f}, top-1 agreement "
            f"{m.get('top1_agreement', float('nan')):.3f}")


def _metrics(res: Any) -> dict:
    return {k: v for k, v in res.to_dict().items() if v is not None and k not in ("type", "writes", "dense_threshold")}


def register(app: typer.Typer) -> None:
    tc_app = typer.Typer(help="Transcoders and cross-layer transcoders: train on a model's MLP inputs and outputs, "
                              "evaluate, move to and from circuit-tracer's files.", no_args_is_help=True)
    app.add_typer(tc_app, name="transcoder")

    @tc_app.command("train")
    def train_cmd(model: str = typer.Option("smollm2"),
                  kind: str = typer.Option("clt", help="clt (cross-layer) | plt (per-layer transcoders)"),
                  layers: str = typer.Option("all", help="'all', '3', '0-9' or '0,2,5'"),
                  reads: str = typer.Option("resid_mid", help="each layer's input point (resid_mid or mlp_in)"),
                  writes: str = typer.Option("mlp_out", help="each layer's target point"),
                  arch: str = typer.Option("batchtopk", help="relu | jumprelu | topk | batchtopk (saved as JumpReLU: "
                                           "circuit-tracer reads it; a TopK CLT it does not)"),
                  width: int = typer.Option(256, help="features per layer (d_sae)"),
                  k: int = typer.Option(16, help="active features per layer and token (topk, batchtopk)"),
                  skip: bool = typer.Option(False, "--skip/--no-skip", help="a linear skip connection per layer"),
                  sparsity_coeff: float = typer.Option(1e-3, help="tanh sparsity weight (relu, jumprelu)"),
                  tokens: int = typer.Option(200_000, help="training tokens (steps = tokens // batch-tokens)"),
                  context: int = typer.Option(128, help="tokens per context"),
                  batch_tokens: int = typer.Option(1024, help="tokens per training step"),
                  buffer_tokens: int = typer.Option(8192, help="the store's mixing buffer (every layer's input and "
                                                    "output per token: keep it small for many layers)"),
                  lr: float = typer.Option(3e-4),
                  warmup_steps: int = typer.Option(20),
                  sparsity_warmup_steps: int = typer.Option(100),
                  dead_tokens: int = typer.Option(200_000, help="a feature silent for this many tokens is dead"),
                  out: str = typer.Option(..., help="output folder (checkpoint, metrics.jsonl, <kind>.safetensors, "
                                          "eval.json)"),
                  corpus: str = typer.Option("default", help="'default', a file / folder path, or a dataset name"),
                  holdout: int = typer.Option(2, help="percent of documents held out for evaluation (by hash)"),
                  shuffle: bool = typer.Option(True, help="read the training documents into memory and shuffle them"),
                  prepend_bos: Optional[bool] = typer.Option(None, "--prepend-bos/--no-prepend-bos",
                                                             help=PREPEND_BOS_HELP),
                  cache_dir: Optional[str] = typer.Option(None, help="on-disk activation cache (resumes cheaply)"),
                  threads: Optional[int] = typer.Option(None, help="torch threads"),
                  checkpoint_every: int = typer.Option(50, help="steps between checkpoints (0: only at the end)"),
                  seed: int = typer.Option(0),
                  eval_tokens: int = typer.Option(16_384, help="held-out tokens for the reconstruction metrics"),
                  eval_contexts: int = typer.Option(16, help="held-out contexts for the CE / KL metrics"),
                  ) -> None:
        """Train a CLT or per-layer transcoders, save them in OUT, evaluate on held-out documents (OUT/eval.json)."""
        if kind not in KINDS:
            raise typer.BadParameter(f"{kind!r}: use clt (cross-layer) or plt (per-layer)", param_hint="--kind")
        check_training_options(arch, ARCHS, {"--width": width, "--tokens": tokens, "--context": context,
                                             "--batch-tokens": batch_tokens, "--k": k}, tokens, batch_tokens, holdout)
        if arch in ("topk", "batchtopk") and k > width:
            raise typer.BadParameter(f"k={k} is more than the features per layer (--width {width})", param_hint="--k")
        if buffer_tokens < 2 * batch_tokens:
            raise typer.BadParameter(f"must be at least twice --batch-tokens ({batch_tokens})",
                                     param_hint="--buffer-tokens")
        folder = check_out_option(out, folder=True)
        check_out_option(cache_dir, folder=True, what="--cache-dir")
        import torch

        from ...models import load
        from ...dictionaries.clt import layer_points
        from ...dictionaries.train import TrainConfig
        from ...dictionaries.transcoder import TranscoderConfig, build

        if threads:
            torch.set_num_threads(threads)
        torch.manual_seed(seed)
        t0 = time.time()
        lm = load(model)
        chosen = parse_layers(layers, lm.n_layers)
        points = {"reads": [f"blocks.{l}.{reads}" for l in chosen], "writes": [f"blocks.{l}.{writes}" for l in chosen]}
        for p in points["reads"][:1] + points["writes"][:1]:
            lm.resolve(p)  # an unknown point: the core's error, listing the valid ones
        prepend_bos = _prepend_bos(lm, prepend_bos)
        store, desc = training_stream(lm, points["reads"] + points["writes"], corpus=corpus, holdout=holdout,
                                      shuffle=shuffle, seed=seed, context=context, batch_tokens=batch_tokens,
                                      buffer_tokens=buffer_tokens, tokens=tokens, cache_dir=cache_dir,
                                      prepend_bos=prepend_bos)
        cfg = TranscoderConfig(arch=arch, d_in=lm.d_model, d_sae=width, n_layers=len(chosen),
                               cross_layer=kind == "clt" if len(chosen) > 1 else False,
                               k=k if arch in ("topk", "batchtopk") else None, skip=skip, model_id=lm.model_id,
                               sparsity_coeff=sparsity_coeff, bos=store.rule.bos, **points)
        tc = build(cfg)
        steps = tokens // batch_tokens
        tcfg = TrainConfig(steps=steps, lr=lr, warmup_steps=warmup_steps, sparsity_warmup_steps=sparsity_warmup_steps,
                           dead_tokens=dead_tokens, checkpoint_every=checkpoint_every)
        result, train_seconds = train_from_store({kind: tc}, store, tcfg, folder)
        t_eval = time.time()
        res, data = evaluate_transcoder_heldout(lm, tc, corpus, holdout, context, eval_tokens, eval_contexts, prepend_bos)
        metrics = _metrics(res)
        report = {"model": model, "model_id": lm.model_id, "kind": kind, "layers": chosen, "reads": reads,
                  "writes": writes, "arch": arch, "width": width, "k": k, "skip": skip, "sparsity_coeff": sparsity_coeff,
                  "train": {"corpus": desc, "tokens": tokens, "steps": result.steps, "batch_tokens": batch_tokens,
                            "lr": lr, "warmup_steps": warmup_steps, "sparsity_warmup_steps": sparsity_warmup_steps,
                            "bos": store.rule.bos, "dead_tokens": dead_tokens, "context": context, "seed": seed,
                            "seconds_this_run": round(train_seconds, 1),
                            "tokens_per_second_this_run": round(result.steps * batch_tokens / max(train_seconds, 1e-9), 1)},
                  "eval": {**data, "seconds": round(time.time() - t_eval, 1)}, "metrics": metrics,
                  "total_seconds_this_run": round(time.time() - t0, 1)}
        atomic_write_json(folder / "eval.json", report)
        typer.echo(f"{folder / (kind + '.safetensors')}: {_summary(metrics)}")

    @tc_app.command("eval")
    def eval_cmd(file: str = typer.Argument(..., help="a transcoder .safetensors file (or a circuit-tracer folder)"),
                 model: str = typer.Option("smollm2"),
                 corpus: str = typer.Option("default"),
                 holdout: int = typer.Option(2, help="percent of documents held out at training (by hash)"),
                 context: int = typer.Option(128),
                 eval_tokens: int = typer.Option(16_384),
                 eval_contexts: int = typer.Option(16),
                 prepend_bos: Optional[bool] = typer.Option(None, "--prepend-bos/--no-prepend-bos",
                                                            help=PREPEND_BOS_HELP),
                 out: Optional[str] = typer.Option(None, help="write the metrics here (.json)"),
                 threads: Optional[int] = typer.Option(None)) -> None:
        """Evaluate transcoders on held-out documents: per-layer FVU, L0, dead; CE loss recovered, KL, top-1
        agreement with every target spliced."""
        check_out_option(out, (".json",))
        if not Path(file).exists():
            raise typer.BadParameter(f"no such file or folder: {file}", param_hint="FILE")
        import torch

        from ...models import load

        if threads:
            torch.set_num_threads(threads)
        lm = load(model)
        tc = _load_any(file, lm)
        res, data = evaluate_transcoder_heldout(lm, tc, corpus, holdout, context, eval_tokens, eval_contexts,
                                   _prepend_bos(lm, prepend_bos))
        metrics = _metrics(res)
        if out:
            atomic_write_json(out, {"file": file, "model": model, "eval": data, "metrics": metrics})
        typer.echo(f"{file}: {_summary(metrics)}")

    @tc_app.command("export")
    def export_cmd(file: str = typer.Argument(..., help="a transcoder .safetensors file"),
                   out: str = typer.Argument(..., help="the circuit-tracer folder to write"),
                   model_name: str = typer.Option(..., help="the model's Hugging Face id (circuit-tracer loads it)"),
                   scan: Optional[str] = typer.Option(None, help="circuit-tracer's feature-visualisation scan name"),
                   overwrite: bool = typer.Option(False, help="replace transcoder files already in OUT")) -> None:
        """Write a transcoder file as a circuit-tracer folder (config.yaml + layer_{i} / W_enc_{i}, W_dec_{i})."""
        folder = check_out_option(out, folder=True)
        if not Path(file).is_file():
            raise typer.BadParameter(f"no such file: {file}", param_hint="FILE")
        from ...dictionaries.circuit_tracer_io import save_circuit_tracer
        from ...dictionaries.transcoder import load_transcoder

        save_circuit_tracer(load_transcoder(file), folder, model_name=model_name, scan=scan, overwrite=overwrite)
        typer.echo(f"wrote {folder}")

    @tc_app.command("import")
    def import_cmd(folder: str = typer.Argument(..., help="a circuit-tracer transcoder folder"),
                   out: str = typer.Argument(..., help="the avec file to write (.safetensors)"),
                   model: Optional[str] = typer.Option(None, help="check against this model (needed to fold "
                                                       "ln2.hook_normalized inputs)")) -> None:
        """Read a circuit-tracer folder and save it as one avec transcoder file."""
        check_out_option(out, (".safetensors",))
        if not Path(folder).is_dir():
            raise typer.BadParameter(f"no such folder: {folder}", param_hint="FOLDER")
        lm = None
        if model:
            from ...models import load

            lm = load(model)
        tc = _load_any(folder, lm)
        tc.save(out)
        typer.echo(f"wrote {out}: {tc.extra_repr()}")


def _load_any(path: str, lm: Any) -> Any:
    """A transcoder from an avec file or a circuit-tracer folder, in float32 (fp16 / bf16 files included)."""
    from ...dictionaries.circuit_tracer_io import load_circuit_tracer
    from ...dictionaries.transcoder import load_transcoder

    if Path(path).is_dir():
        return load_circuit_tracer(path, lm=lm).float()
    return load_transcoder(path, dtype="float32")
