"""Train SAEs, transcoders and cross-layer transcoders on a stream of activation batches, resumably.

    saes = {"l6_topk": SAE(arch="topk", d_in=768, d_sae=16384, k=32, hook="blocks.6.resid_post")}
    result = train(saes, batches, TrainConfig(steps=20_000), out="runs/l6")

``batches`` yields tensors ``[n, d_in]`` (every SAE reads it) or dicts hook -> tensor (each SAE reads
``batch[sae.cfg.hook]``, so several SAEs, one per (hook, config), train from one activation stream).
A transcoder or CLT (``avec.dictionaries.transcoder``) picks its inputs and targets from the same dict
(``batch[h] for h in cfg.reads`` / ``cfg.writes``; its ``pick``): the MLP inputs and outputs of every layer,
collected in one pass by the activation store, train a CLT, a set of per-layer transcoders and SAEs
side by side. Any module with ``losses``, ``init_from_sample``, ``save`` and a dataclass ``cfg`` trains
(optionally ``pick``, ``batch_metrics``, ``before_step`` / ``after_step``, ``n_latents``).
Pass a function ``start -> iterator`` to make resuming cheap; a plain iterable is re-iterated from the
start and its first ``position`` batches skipped (it must then yield the same batches again).

Recipe: Adam (per SAE); learning rate warmed up linearly over ``warmup_steps``, constant, then decayed
to ``min_lr_fraction * lr`` over the last ``1 - decay_start`` of the steps (``decay`` "cosine" or
"linear"; "none" keeps it constant); sparsity coefficient warmed up linearly from 0 over
``sparsity_warmup_steps``; gradient norm clipped per SAE at ``clip_grad_norm``; unit-norm decoder
projection / renormalisation around each step where the architecture uses it (``SAE.before_step`` /
``after_step``). Each SAE is initialised from the first batch (input scale, ``b_dec`` = geometric
median) unless ``init=False``.

Dead latents: a latent is dead once it has not fired in the last ``dead_tokens`` tokens (counter per
latent, saved in checkpoints); TopK / BatchTopK feed the dead set to AuxK.

Files in ``out``: ``checkpoint.safetensors`` (every SAE's tensors, Adam state, dead-latent counters,
torch RNG state; JSON metadata with step, data position, configs and optimiser hyperparameters),
written atomically every ``checkpoint_every`` steps and at the end; ``metrics.jsonl`` (one line per
dictionary every ``log_every`` steps: loss terms, batch FVU, L0, dead fraction; for a multi-layer
transcoder also ``fvu_per_layer``, ``l0_per_layer``, ``dead_per_layer``; on resume, lines past the
checkpoint are dropped); and at the end
``<name>.safetensors`` per SAE (``SAE.save``: normalisation folded in). Training resumes from
``checkpoint.safetensors`` when it exists, and the result is identical to an uninterrupted run.

Threads: torch's own setting (``torch.set_num_threads``) is used as is.

Several processes (data parallel, one or more machines): run the same script under torchrun, e.g.

    torchrun --standalone --nproc_per_node 2 train_saes.py                    # one machine
    torchrun --nnodes 2 --nproc_per_node 8 \\
             --rdzv-backend c10d --rdzv-endpoint host0:29500 train_saes.py    # on each of two machines

``train`` initialises the process group from torchrun's environment (gloo on CPU, nccl when CUDA is
available; a group the caller already initialised is used as is); there is no other switch. Each rank
reads its own data: a source ``f(start, rank=, world_size=)`` yields the rank's own shard from its
``start``-th batch (e.g. an activation store opened with ``rank``, ``world_size``); any other source is
read round-robin (global step s uses stream batches ``s*W .. s*W+W-1``, rank r the ``(s*W+r)``-th, so
each rank reads past the others' batches: fine for generated data, wasteful for a store). A step is
then one step on the global batch (the ranks' batches concatenated):

* gradients: one flat all-reduce per SAE per step, weighted by each rank's token count, so the update
  is that of the mean loss over the global batch (explicit collectives, not ``DistributedDataParallel``:
  the loss is ``SAE.losses``, not ``forward`` which DDP hooks, and clipping, decoder projection and the
  counters below must see the reduced values); clipping, the unit-norm projection and Adam then run
  on identical gradients, so the SAEs stay identical on every rank;
* init: rank 0 initialises each SAE (input scale, geometric-median ``b_dec``) from the global first
  batch (gathered) and broadcasts it; every SAE is also broadcast from rank 0 at the start, so the
  ranks' random inits do not matter;
* dead latents: "fired" is OR-ed over ranks and counters advance by the global token count;
* BatchTopK: the top ``k * n`` is taken over each rank's batch (per-rank, not over the global batch),
  and the threshold statistic is the smallest activation kept on any rank (all-reduced MIN), so the
  inference threshold is identical everywhere; AuxK's normaliser (the error's variance) is per rank
  too, so with AuxK active or BatchTopK a step is the mean over ranks of per-rank losses; for relu,
  jumprelu and topk without dead latents it equals a 1-process step on the global batch;
* logged metrics: token-weighted means of the ranks' values (loss, mse, l0 exact; fvu a mean of ratios);
* the end of the data: a step runs only when every rank has a batch (one small all-reduce per step).

Only rank 0 writes ``out`` (checkpoints, ``metrics.jsonl``, final files, all atomically); ``out`` must
be on a file system every rank sees for resuming: all ranks load the same checkpoint, which records
the number of processes and is resumed only by as many (its data position counts per-rank batches).
Every rank returns the same ``TrainResult`` after rank 0 has written its files.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch

from ..io import atomic_write, atomic_write_text
from ..results import Result
from . import distributed as _dist
from .sae import SAE

CHECKPOINT, LOG = "checkpoint.safetensors", "metrics.jsonl"
DECAYS = ("cosine", "linear", "none")
CKPT_FORMAT = "avec.sae-train/1"


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    decay: str = "cosine"
    decay_start: float = 0.8           # fraction of the steps after which the LR decays
    min_lr_fraction: float = 0.0
    sparsity_warmup_steps: int = 0
    clip_grad_norm: float | None = 1.0
    dead_tokens: int = 1_000_000       # a latent silent for this many tokens is dead (AuxK, dead_fraction)
    checkpoint_every: int = 0          # 0: only at the end
    log_every: int = 10
    init: bool = True                  # initialise each SAE from the first batch

    def __post_init__(self):
        problems = []
        for name in ("steps", "log_every", "dead_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)!r}; it must be a positive int")
        for name in ("warmup_steps", "sparsity_warmup_steps", "checkpoint_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)!r}; it must be an int >= 0")
        if not self.lr > 0:
            problems.append(f"lr={self.lr!r}; it must be > 0")
        if self.decay not in DECAYS:
            problems.append(f"decay={self.decay!r}; allowed: {', '.join(DECAYS)}")
        if not 0 <= self.decay_start <= 1 or not 0 <= self.min_lr_fraction <= 1:
            problems.append("decay_start and min_lr_fraction must be in [0, 1]")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            problems.append(f"clip_grad_norm={self.clip_grad_norm!r}; use a positive number or None")
        if problems:
            raise ValueError("bad TrainConfig: " + "; ".join(problems))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for (0-based) ``step``: linear warm-up, constant, then cosine / linear decay."""
    lr = cfg.lr
    if step < cfg.warmup_steps:
        lr *= (step + 1) / cfg.warmup_steps
    start = int(cfg.decay_start * cfg.steps)
    if cfg.decay != "none" and step >= start and cfg.steps > start:
        frac = (step - start) / (cfg.steps - start)
        shape = 0.5 * (1 + math.cos(math.pi * frac)) if cfg.decay == "cosine" else 1 - frac
        lr *= cfg.min_lr_fraction + (1 - cfg.min_lr_fraction) * shape
    return lr


def sparsity_scale_at(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the sparsity coefficient: linear from 0 to 1 over ``sparsity_warmup_steps``."""
    return min(1.0, (step + 1) / cfg.sparsity_warmup_steps) if cfg.sparsity_warmup_steps else 1.0


@dataclass
class TrainResult(Result):
    """Trained dictionaries (by name) and the logged metrics (one row per dictionary per logged step)."""

    saes: dict[str, Any]
    history: list[dict] = field(default_factory=list)
    steps: int = 0
    out: Path | None = None

    def to_dict(self) -> dict:
        """The log, the step count and the output folder; the dictionaries by name only (their weights are
        files, not JSON)."""
        from ..results import jsonable

        return {"type": "TrainResult", "saes": sorted(self.saes), "history": jsonable(self.history),
                "steps": self.steps, "out": None if self.out is None else str(self.out)}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainResult":
        """The log back from ``to_dict()``; ``saes`` maps each name to None (the modules are not in it)."""
        return cls({name: None for name in d["saes"]}, list(d["history"]), int(d["steps"]),
                   None if d.get("out") is None else Path(d["out"]))

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.history)

    def per_layer_frame(self):
        """One row per (dictionary, logged step, layer) of the multi-layer transcoders: batch FVU, L0 and
        dead fraction of that layer's features."""
        import pandas as pd

        rows = [{"sae": r["sae"], "step": r["step"], "layer": l, "fvu": f, "l0": r["l0_per_layer"][l],
                 "dead_fraction": r["dead_per_layer"][l]}
                for r in self.history if "fvu_per_layer" in r and "dead_per_layer" in r
                for l, f in enumerate(r["fvu_per_layer"])]
        return pd.DataFrame(rows, columns=["sae", "step", "layer", "fvu", "l0", "dead_fraction"])

    def plot(self, ax=None):
        from ..plotting import pyplot

        plt = pyplot()
        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 3.2))
        df = self.to_frame()
        for name, g in (df.groupby("sae") if len(df) else []):
            ax.plot(g["step"], g["fvu"], label=f"{name} FVU")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("fraction of variance unexplained (batch)")
        if len(df):
            ax.legend(fontsize=8)
        return fig


# ----------------------------------------------------------------------------- data
def _data_from(batches: Any, position: int) -> Iterator:
    if callable(batches) and not isinstance(batches, (torch.Tensor, Mapping)):
        return iter(batches(position))
    it = iter(batches)
    for _ in range(position):  # a plain iterable: skip what the checkpoint has already used
        next(it)
    return it


def _pick(batch: Any, name: str, sae: Any) -> Any:
    if callable(getattr(sae, "pick", None)):  # transcoders: (inputs, targets) of every layer
        return sae.pick(batch)
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping):
        hook = sae.cfg.hook
        if hook is None:
            raise ValueError(f"SAE {name!r} has no hook in its config; with dict batches (hook -> tensor) each "
                             "SAE reads batch[sae.cfg.hook]")
        if hook not in batch:
            raise KeyError(f"SAE {name!r} reads hook {hook!r}, not in this batch (keys: {sorted(batch)})")
        return batch[hook]
    raise TypeError(f"a batch is a tensor [n, d_in] or a dict hook -> tensor, got {type(batch).__name__}")


# ----------------------------------------------------------------------------- checkpoints
def _optim_tensors(name: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    sd = opt.state_dict()
    tensors = {}
    for i, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{name}.opt.{i}.{k}"] = (v if isinstance(v, torch.Tensor) else torch.tensor(v)).contiguous()
    return tensors, sd["param_groups"]


def _optim_state(name: str, tensors: dict[str, torch.Tensor], groups: list) -> dict:
    state: dict[int, dict] = {}
    prefix = f"{name}.opt."
    for key, v in tensors.items():
        if key.startswith(prefix):
            i, k = key[len(prefix):].split(".", 1)
            state.setdefault(int(i), {})[k] = v
    return {"state": state, "param_groups": groups}


def save_checkpoint(path: Path, saes: dict[str, SAE], opts: dict, since_fired: dict, step: int,
                    position: int, cfg: TrainConfig, world_size: int = 1) -> None:
    """Everything needed to continue exactly, as one safetensors file (atomic)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    groups = {}
    for name, sae in saes.items():
        for k, v in sae.state_dict().items():
            tensors[f"{name}.sae.{k}"] = v.detach().clone().contiguous()
        t, groups[name] = _optim_tensors(name, opts[name])
        tensors.update(t)
        tensors[f"{name}.since_fired"] = since_fired[name].contiguous()
    meta = {"format": CKPT_FORMAT, "state": json.dumps({
        "step": step, "position": position, "world_size": world_size, "train_config": asdict(cfg),
        "param_groups": groups,
        "saes": {n: asdict(s.cfg) for n, s in saes.items()}})}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_checkpoint(path: Path, saes: dict[str, SAE], opts: dict, since_fired: dict,
                    world_size: int = 1) -> tuple[int, int]:
    """Restore a checkpoint into ``saes`` / ``opts`` / ``since_fired``; returns (step, position).
    ``world_size``: the number of processes resuming, which must be the one that wrote it (the data
    position counts batches per rank)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        state = json.loads(meta["state"])
    except Exception as e:
        raise ValueError(f"checkpoint {str(path)!r} is unreadable (truncated or corrupt?): {e}; "
                         "delete it to start over") from None
    if meta.get("format") != CKPT_FORMAT:
        raise ValueError(f"{str(path)!r} is not an avec SAE training checkpoint")
    if state.get("world_size", 1) != world_size:
        raise ValueError(f"checkpoint {str(path)!r} was written by a run over {state.get('world_size', 1)} "
                         f"process(es) and is resumed by {world_size}; resume with the same number of "
                         "processes (its data position counts batches per rank)")
    mine = json.loads(json.dumps({n: asdict(s.cfg) for n, s in saes.items()}))
    if not _same_configs(mine, state["saes"]):
        raise ValueError(f"checkpoint {str(path)!r} holds SAEs {sorted(state['saes'])} with other configs than "
                         f"the ones given ({sorted(mine)}); use another output folder or the same SAEs")
    for name, sae in saes.items():
        prefix = f"{name}.sae."
        sae.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        opts[name].load_state_dict(_optim_state(name, tensors, state["param_groups"][name]))
        since_fired[name].copy_(tensors[f"{name}.since_fired"])
    torch.set_rng_state(tensors["rng.torch"])
    return state["step"], state["position"]


def _same_configs(mine: dict[str, dict], saved: dict[str, dict]) -> bool:
    """The same dictionaries with the same configs; a field the checkpoint lacks (written before the field
    existed, e.g. ``bos``) is not a difference: the run resumes with the value given now."""
    return mine.keys() == saved.keys() and all(
        set(saved[n]) <= set(mine[n]) and all(mine[n][k] == v for k, v in saved[n].items()) for n in mine)


def _read_log(path: Path, upto: int) -> list[dict]:
    """Logged rows with step <= ``upto`` (a killed run may have logged past its last checkpoint)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if row.get("step", math.inf) <= upto:
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- training
def adam(sae: Any, config: TrainConfig) -> torch.optim.Adam:
    """A dictionary's Adam. Fused (one kernel over each tensor instead of ~10 passes; the same update to float
    rounding: ~3x faster on CPU, a sixth of a TopK SAE step) where torch has that kernel."""
    params = list(sae.parameters())
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64) for p in params)
    return torch.optim.Adam(params, lr=config.lr, betas=config.betas, fused=fused or None)


def _trainable(x: Any) -> bool:
    return isinstance(x, torch.nn.Module) and all(callable(getattr(x, a, None)) for a in
                                                  ("losses", "init_from_sample", "save")) and hasattr(x, "cfg")


def _n_latents(sae: Any) -> int:
    return int(getattr(sae, "n_latents", sae.d_sae))


def _as_named(saes: Any) -> dict[str, Any]:
    if _trainable(saes):
        return {"sae": saes}
    if not isinstance(saes, Mapping) or not saes or not all(_trainable(s) for s in saes.values()):
        raise TypeError("train() takes a dictionary (an SAE, Transcoder or CrossLayerTranscoder) or a non-empty dict "
                        "name -> dictionary")
    bad = [n for n in saes if not isinstance(n, str) or not n or any(c in n for c in "/\\. ")]
    if bad:
        raise ValueError(f"SAE names become file names and checkpoint keys: no dots, slashes or spaces, got {bad}")
    return dict(saes)


def _batch_metrics(x: Any, out, sae: Any) -> dict[str, Any]:
    if callable(getattr(sae, "batch_metrics", None)):
        return sae.batch_metrics(x, out)
    with torch.no_grad():
        x_n = x.reshape(-1, sae.d_in).to(out.x_hat.dtype) * sae.input_scale.to(out.x_hat.dtype)
        var = (x_n - x_n.mean(0)).pow(2).sum()
        return {"loss": float(out.loss), "mse": float(out.mse), "sparsity": float(out.sparsity),
                "aux": float(out.aux), "l0": float(out.codes.active()) / out.n_tokens,
                "fvu": float((out.x_hat - x_n).pow(2).sum() / var.clamp_min(1e-12))}


def _rows(x: Any, d) -> Any:
    """Every rank's rows of a batch (a tensor, or a tuple of tensors: a transcoder's inputs and targets
    with their token axis second), gathered in rank order."""
    if isinstance(x, torch.Tensor):
        return _dist.gather_rows(x.reshape(-1, x.shape[-1]), d)
    return tuple(_dist.gather_rows(t.transpose(0, 1), d).transpose(0, 1) for t in x)


def _mean_over_ranks(metrics: dict[str, Any], weight: int, d) -> dict[str, Any]:
    """Token-weighted means of the ranks' metrics; per-layer lists elementwise."""
    flat = {}
    for k, v in metrics.items():
        if isinstance(v, list):
            flat.update({f"{k}\0{i}": x for i, x in enumerate(v)})
        else:
            flat[k] = v
    mean = _dist.weighted_mean(flat, weight, d)
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        out[k] = [mean[f"{k}\0{i}"] for i in range(len(v))] if isinstance(v, list) else mean[k]
    return out


def train(saes: Any, batches: Iterable | Callable[[int], Iterable], config: TrainConfig,
          out: str | os.PathLike | None = None, *, progress: bool = True) -> TrainResult:
    """Train ``saes`` on ``batches`` for ``config.steps`` steps (see the module docstring); with ``out``,
    checkpoint, log and save there, resuming from ``out/checkpoint.safetensors`` if present."""
    from tqdm.auto import tqdm

    named = _as_named(saes)
    d = _dist.setup()
    opts = {n: adam(s, config) for n, s in named.items()}
    since_fired = {n: torch.zeros(_n_latents(s), dtype=torch.int64, device=s.b_dec.device) for n, s in named.items()}
    out = Path(out) if out is not None else None
    step = position = 0
    history: list[dict] = []
    resume = out is not None and (out / CHECKPOINT).exists()
    if d.on:  # rank 0 decides (it alone writes there)
        resume = _dist.broadcast_flag(resume, d)
    if resume:  # every rank loads the same checkpoint
        step, position = load_checkpoint(out / CHECKPOINT, named, opts, since_fired, world_size=d.world)
        history = _read_log(out / LOG, step)
        if d.main:
            atomic_write_text(out / LOG, "".join(json.dumps(r) + "\n" for r in history))
    elif out is not None and d.main:
        out.mkdir(parents=True, exist_ok=True)
        if (out / LOG).exists():
            (out / LOG).unlink()  # a fresh run: an old log without its checkpoint is stale
    if d.on:
        for sae in named.values():  # identical starting points whatever each rank's RNG did
            _dist.broadcast_module(sae, d)
    data = _dist.shard(batches, position, d) if d.on else _data_from(batches, position)
    log = open(out / LOG, "a", encoding="utf-8") if out is not None and d.main else None
    bar = tqdm(total=config.steps, initial=step, desc="training " + ", ".join(named), disable=not progress or not d.main)
    try:
        for sae in named.values():
            sae.train()
        while step < config.steps:
            try:
                batch = next(data)
            except StopIteration:
                batch = None
            if (batch is None) if not d.on else not _dist.all_true(batch is not None, d):
                warnings.warn(f"the activation stream ended after {position} batches"
                              f"{' (per rank)' if d.on else ''}, at step {step} of {config.steps}", stacklevel=2)
                break
            position += 1
            lr, sp = lr_at(step, config), sparsity_scale_at(step, config)
            rows = []
            for name, sae in named.items():
                x = _pick(batch, name, sae)
                if step == 0 and config.init:
                    if d.on:  # the global first batch, on rank 0, then broadcast
                        x_all = _rows(x, d)
                        if d.main:
                            sae.init_from_sample(x_all)
                        _dist.broadcast_module(sae, d)
                    else:
                        sae.init_from_sample(x)
                dead = since_fired[name] >= config.dead_tokens
                opt = opts[name]
                for g in opt.param_groups:
                    g["lr"] = lr
                opt.zero_grad(set_to_none=True)
                res = sae.losses(x, sparsity_scale=sp, dead=dead)
                res.loss.backward()
                n_tokens = local_tokens = res.n_tokens
                fired = res.fired
                if d.on:
                    n_tokens = _dist.average_grads(list(sae.parameters()), n_tokens, d)
                    fired = _dist.any_rank(fired, d)
                    if sae.cfg.arch == "batchtopk":  # the smallest kept activation over all ranks
                        _dist.min_over_ranks_(sae.threshold, d)
                sae.before_step()
                if config.clip_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(sae.parameters(), config.clip_grad_norm)
                opt.step()
                sae.after_step()
                since_fired[name].add_(n_tokens).masked_fill_(fired.to(since_fired[name].device), 0)
                if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
                    metrics = _batch_metrics(x, res, sae)
                    if d.on:
                        metrics = _mean_over_ranks(metrics, local_tokens, d)
                    dead_now = since_fired[name] >= config.dead_tokens
                    row = {"step": step + 1, "sae": name, "lr": lr, "sparsity_scale": sp, **metrics,
                           "dead_fraction": float(dead_now.float().mean())}
                    if hasattr(sae, "n_layers"):
                        row["dead_per_layer"] = dead_now.view(sae.n_layers, -1).float().mean(1).tolist()
                    rows.append(row)
            step += 1
            bar.update(1)
            if rows:
                history.extend(rows)
                bar.set_postfix(fvu=f"{rows[0]['fvu']:.3g}", l0=f"{rows[0]['l0']:.3g}")
                if log is not None:
                    log.write("".join(json.dumps(r) + "\n" for r in rows))
                    log.flush()
            if out is not None and d.main and config.checkpoint_every and step % config.checkpoint_every == 0:
                save_checkpoint(out / CHECKPOINT, named, opts, since_fired, step, position, config, d.world)
        if out is not None and d.main:
            save_checkpoint(out / CHECKPOINT, named, opts, since_fired, step, position, config, d.world)
            for name, sae in named.items():
                sae.save(out / f"{name}.safetensors")
        _dist.barrier(d)  # every rank returns once rank 0's files are there
    finally:
        bar.close()
        if log is not None:
            log.close()
        for sae in named.values():
            sae.eval()
    return TrainResult(saes=named, history=history, steps=step, out=out)
