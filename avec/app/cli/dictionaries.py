"""CLI commands of dictionaries: ``avec sae train | eval | dashboard``. ``register(app)`` adds them.

    avec sae train --model smollm2 --at blocks.12.resid_post --arch topk --width 4608 --k 32 \\
                   --tokens 1000000 --out runs/l12

Held-out text: the corpus documents are split by a hash of their text (``zlib.crc32(text) % 100 <
holdout``, default 2%: about 2% of the documents, whatever their order); training reads only the
others, ``eval`` / the evaluation after training only the held-out ones. With ``--shuffle`` (the
default) the training documents are read into memory and shuffled (seeded) before being cut into
contexts, so a corpus stored source by source (the default one: State of the Union addresses, then
the Bible) is mixed.

Resuming: ``train`` resumes from ``OUT/checkpoint.safetensors`` when it exists; the activation stream
is then recomputed up to the checkpoint's position (or read from ``--cache-dir``).
"""

from __future__ import annotations

import itertools
import math
import json
import time
from pathlib import Path
from typing import Any, Optional

import typer

from ...io import atomic_write_json, check_out_option
from ...dictionaries.heldout import describe_split, evaluate_heldout, held_out, prepend_bos_default, split_documents  # noqa: F401

ARCHS = ("relu", "jumprelu", "topk", "batchtopk")
PREPEND_BOS_HELP = ("start every context with the BOS token (default: yes when the tokenizer has one). Models whose "
                    "tokenizer adds no BOS (SmolLM2) put a massive activation (100x the others' norm) on a context's first token, which "
                    "would dominate the reconstruction loss; with --prepend-bos that sink sits on the BOS, which "
                    "is dropped")


def check_training_options(arch: str, archs, sizes: dict[str, int], tokens: int, batch_tokens: int,
                           holdout: int) -> None:
    """The option checks `avec sae train` and `avec transcoders train` share, before any work: a known
    architecture, positive sizes (``{"--width": 1024, ...}``), at least one batch of tokens, a holdout percent."""
    if arch not in archs:
        raise typer.BadParameter(f"{arch!r} is not an architecture; use one of {', '.join(archs)}", param_hint="--arch")
    for name, value in sizes.items():
        if value < 1:
            raise typer.BadParameter(f"must be >= 1, got {value}", param_hint=name)
    if tokens < batch_tokens:
        raise typer.BadParameter(f"--tokens ({tokens}) is less than one batch (--batch-tokens {batch_tokens})",
                                 param_hint="--tokens")
    if not 1 <= holdout <= 50:
        raise typer.BadParameter(f"must be a percent in 1..50, got {holdout}", param_hint="--holdout")


def training_stream(lm: Any, hooks, *, corpus: str, holdout: int, shuffle: bool, seed: int, context: int,
                    batch_tokens: int, buffer_tokens: int, tokens: int, cache_dir: Optional[str],
                    prepend_bos: bool) -> tuple[Any, str]:
    """The activation stream a ``train`` command reads, and the description of its document split:
    ``hooks``' activations on the training documents (shuffled and seeded as the options say), cut into
    contexts by the BOS rule ``prepend_bos`` (resolved by the caller with ``prepend_bos_default``, which its
    held-out evaluation needs too)."""
    from ...dictionaries.store import ActivationStore

    desc = describe_split(corpus, "train", holdout, shuffle, seed)
    docs = split_documents(corpus, "train", holdout, shuffle=shuffle, seed=seed)
    # the store counts context tokens (specials included, then dropped): ask for a little more
    store = ActivationStore(lm, hooks, docs, context=context, batch_tokens=batch_tokens, buffer_tokens=buffer_tokens,
                            max_tokens=int(tokens * 1.05) + context, seed=seed, cache_dir=cache_dir,
                            corpus=desc if cache_dir else None, prepend_bos=prepend_bos)
    return store, desc


def train_from_store(modules: dict, store: Any, cfg: Any, folder: Path) -> tuple[Any, float]:
    """Train ``modules`` on ``store``'s batches (resuming from ``folder``'s checkpoint, which knows how many
    batches to skip); returns the result and this run's training seconds."""
    from ...dictionaries.train import train

    t = time.time()
    result = train(modules, lambda start: itertools.islice(iter(store), start, None), cfg, out=folder)
    seconds = time.time() - t
    typer.echo(f"trained {result.steps} steps in {seconds:.0f} s; evaluating on held-out documents")
    return result, seconds


def _metrics(res: Any) -> dict:
    keys = ("n_tokens", "mse", "fvu", "l0", "dead_fraction", "dense_fraction", "cosine", "norm_ratio", "ce_clean",
            "ce_spliced", "ce_zero_ablation", "ce_loss_recovered", "delta_lm_loss", "kl")
    return {k: getattr(res, k) for k in keys if getattr(res, k, None) is not None}


def _summary(m: dict) -> str:
    return (f"FVU {m['fvu']:.3f}, L0 {m['l0']:.1f}, dead {m['dead_fraction']:.3f}, dense {m['dense_fraction']:.3f}, "
            f"CE loss recovered {m.get('ce_loss_recovered', float('nan')):.3f} (clean {m.get('ce_clean', float('nan')):.3f}, "
            f"spliced {m.get('ce_spliced', float('nan')):.3f}, zero {m.get('ce_zero_ablation', float('nan')):.3f}), "
            f"KL {m.get('kl', float('nan')):.3f}")


def register(app: typer.Typer) -> None:
    sae_app = typer.Typer(help="Sparse autoencoders: train one on a model's activations, evaluate it, read its features.",
                          no_args_is_help=True)
    app.add_typer(sae_app, name="sae")

    @sae_app.command("train")
    def train_cmd(model: str = typer.Option("smollm2"),
                  at: str = typer.Option("blocks.12.resid_post", help="hook point read"),
                  arch: str = typer.Option("topk", help="relu | jumprelu | topk | batchtopk"),
                  width: int = typer.Option(4608, help="number of latents (d_sae)"),
                  k: int = typer.Option(32, help="active latents per token (topk, batchtopk)"),
                  tokens: int = typer.Option(1_000_000, help="training tokens (steps = tokens // batch-tokens)"),
                  context: int = typer.Option(128, help="tokens per context"),
                  batch_tokens: int = typer.Option(4096, help="tokens per training step"),
                  lr: float = typer.Option(3e-4),
                  warmup_steps: int = typer.Option(0),
                  dead_tokens: int = typer.Option(1_000_000, help="a latent silent for this many tokens is dead "
                                                  "(fed to AuxK, counted in the logged dead fraction)"),
                  out: str = typer.Option(..., help="output folder (checkpoint, metrics.jsonl, sae.safetensors, "
                                          "eval.json)"),
                  corpus: str = typer.Option("default", help="'default' (the bundled corpus), a file / folder path, "
                                             "or a Hugging Face dataset name"),
                  holdout: int = typer.Option(2, help="percent of documents held out for evaluation (by hash)"),
                  shuffle: bool = typer.Option(True, help="read the training documents into memory and shuffle them"),
                  prepend_bos: Optional[bool] = typer.Option(None, "--prepend-bos/--no-prepend-bos",
                                                             help=PREPEND_BOS_HELP),
                  cache_dir: Optional[str] = typer.Option(None, help="on-disk activation cache (resumes cheaply)"),
                  threads: Optional[int] = typer.Option(None, help="torch threads"),
                  checkpoint_every: int = typer.Option(100, help="steps between checkpoints (0: only at the end)"),
                  seed: int = typer.Option(0),
                  eval_tokens: int = typer.Option(32_768, help="held-out tokens for the reconstruction metrics"),
                  eval_contexts: int = typer.Option(32, help="held-out contexts for the CE / KL metrics"),
                  ) -> None:
        """Train an SAE on a model's activations, save it in OUT, evaluate it on held-out documents (OUT/eval.json)."""
        check_training_options(arch, ARCHS, {"--width": width, "--tokens": tokens, "--context": context,
                                             "--batch-tokens": batch_tokens, "--k": k}, tokens, batch_tokens, holdout)
        folder = check_out_option(out, folder=True)
        check_out_option(cache_dir, folder=True, what="--cache-dir")
        import torch

        from ...models import load
        from ...dictionaries.sae import SAE
        from ...dictionaries.train import TrainConfig

        if threads:
            torch.set_num_threads(threads)
        torch.manual_seed(seed)
        t0 = time.time()
        lm = load(model)
        hook = lm.resolve(at)
        if len(hook) != 1:
            raise typer.BadParameter(f"{at!r} names {len(hook)} hook points; give one", param_hint="--at")
        at = hook[0]
        prepend_bos = prepend_bos_default(lm, prepend_bos)
        store, desc = training_stream(lm, at, corpus=corpus, holdout=holdout, shuffle=shuffle, seed=seed, context=context,
                                      batch_tokens=batch_tokens, buffer_tokens=max(2 ** 16, 2 * batch_tokens),
                                      tokens=tokens, cache_dir=cache_dir, prepend_bos=prepend_bos)
        steps = tokens // batch_tokens
        w = lm.site(at).width
        d_in = math.prod(w) if w else lm.d_model
        sae = SAE(arch=arch, d_in=d_in,
                  d_sae=width, k=k if arch in ("topk", "batchtopk") else None, hook=at, model_id=lm.model_id)
        cfg = TrainConfig(steps=steps, lr=lr, warmup_steps=warmup_steps, dead_tokens=dead_tokens,
                          checkpoint_every=checkpoint_every)
        result, train_seconds = train_from_store({"sae": sae}, store, cfg, folder)
        t_eval = time.time()
        res, data = evaluate_heldout(lm, sae, at, corpus, holdout, context, eval_tokens, eval_contexts,
                                   prepend_bos)
        metrics = _metrics(res)
        report = {"model": model, "model_id": lm.model_id, "at": at, "arch": arch, "width": width, "k": k,
                  "train": {"corpus": desc, "tokens": tokens, "steps": result.steps, "batch_tokens": batch_tokens,
                            "lr": lr, "warmup_steps": warmup_steps, "bos": store.rule.bos, "dead_tokens": dead_tokens, "context": context, "seed": seed, "seconds_this_run": round(train_seconds, 1)},
                  "eval": {**data, "seconds": round(time.time() - t_eval, 1)}, "metrics": metrics,
                  "total_seconds_this_run": round(time.time() - t0, 1)}
        atomic_write_json(folder / "eval.json", report)
        typer.echo(f"{folder / 'sae.safetensors'}: {_summary(metrics)}")

    @sae_app.command("eval")
    def eval_cmd(sae_file: str = typer.Argument(..., help="an SAE .safetensors file"),
                 model: str = typer.Option("smollm2"),
                 at: Optional[str] = typer.Option(None, help="hook point (default: the SAE's own)"),
                 corpus: str = typer.Option("default"),
                 holdout: int = typer.Option(2, help="percent of documents held out at training (by hash)"),
                 context: int = typer.Option(128),
                 eval_tokens: int = typer.Option(32_768),
                 eval_contexts: int = typer.Option(32),
                 prepend_bos: Optional[bool] = typer.Option(None, "--prepend-bos/--no-prepend-bos",
                                                            help=PREPEND_BOS_HELP),
                 out: Optional[str] = typer.Option(None, help="write the metrics here (.json)"),
                 threads: Optional[int] = typer.Option(None)) -> None:
        """Evaluate an SAE on the held-out documents: FVU, L0, dead / dense, CE loss recovered, KL."""
        check_out_option(out, (".json",))
        if not Path(sae_file).is_file():
            raise typer.BadParameter(f"no such file: {sae_file}", param_hint="SAE_FILE")
        import torch

        from ...models import load
        from ...dictionaries.sae import SAE
        from ...dictionaries.shipped import cast

        if threads:
            torch.set_num_threads(threads)
        sae = cast(SAE.load(sae_file), "float32")  # fp16 files (the shipped ones) run in fp32
        at = at or sae.cfg.hook
        if at is None:
            raise typer.BadParameter("the SAE does not record its hook point; give --at", param_hint="--at")
        lm = load(model)
        res, data = evaluate_heldout(lm, sae, at, corpus, holdout, context, eval_tokens, eval_contexts,
                                   prepend_bos)
        metrics = _metrics(res)
        if out:
            atomic_write_json(out, {"sae": sae_file, "model": model, "at": at, "eval": data, "metrics": metrics})
        typer.echo(f"{sae_file}: {_summary(metrics)}")

    @sae_app.command("dashboard")
    def dashboard_cmd(sae_file: str = typer.Argument(..., help="an SAE .safetensors file"),
                      model: str = typer.Option("smollm2"),
                      at: Optional[str] = typer.Option(None, help="hook point (default: the SAE's own)"),
                      out: str = typer.Option(..., help="output folder"),
                      features: str = typer.Option("0,1,2,3,4,5,6,7", help="feature ids, e.g. '0,1,2'"),
                      corpus: str = typer.Option("default"),
                      holdout: int = typer.Option(2),
                      contexts: int = typer.Option(256, help="held-out contexts searched for top examples"),
                      context: int = typer.Option(128, help="tokens per context"),
                      k: int = typer.Option(10, help="examples per feature")) -> None:
        """One HTML page per feature (top held-out examples, logit effects) and an index."""
        folder = check_out_option(out, folder=True)
        try:
            ids = [int(f) for f in features.split(",") if f.strip()]
        except ValueError:
            raise typer.BadParameter(f"{features!r}: give comma-separated feature ids", param_hint="--features") from None
        if not Path(sae_file).is_file():
            raise typer.BadParameter(f"no such file: {sae_file}", param_hint="SAE_FILE")
        from ...models import load
        from ...dictionaries.dashboard import dashboard
        from ...dictionaries.sae import SAE
        from ...dictionaries.shipped import cast

        sae = cast(SAE.load(sae_file), "float32")  # fp16 files (the shipped ones) run in fp32
        bad = [i for i in ids if not 0 <= i < sae.d_sae]
        if bad or not ids:
            raise typer.BadParameter(f"feature ids must lie in 0..{sae.d_sae - 1}, got {bad or features!r}",
                                     param_hint="--features")
        at = at or sae.cfg.hook
        lm = load(model)
        import torch

        from ...dictionaries.contexts import context_rule, iter_contexts

        rule = context_rule(lm.tokenizer, context, prepend_bos=prepend_bos_default(lm, None))  # as in training
        ctxs = list(itertools.islice(iter_contexts(split_documents(corpus, "heldout", holdout), lm.tokenizer, rule),
                                     contexts))
        index = dashboard(lm, sae, at, torch.stack(ctxs), ids, folder, k=k)
        typer.echo(f"wrote {index}")
