"""Logit lens: read each residual point through the model's own final norm and unembedding.

The last row (the final ``resid_post``) reproduces the model's logits exactly, soft-capping included,
since it is the same computation; earlier rows show what the residual "would predict" if the network
stopped there. Ranks count the tokens with a strictly higher logit (rank 0 = top-1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..models.lm import LanguageModel
from ..plotting import heatmap, pyplot
from ..results import Result
from . import weights as W
from ._common import columns, ensure_run, token_label
from .decomposition import final_point


def lens_points(lm: LanguageModel, points: str | Sequence[str] = "resid_pre") -> tuple[list[str], list[str]]:
    """(hook points, row labels) for a residual family: "resid_pre" (each block's input, then the final
    resid_post), "resid_mid", "resid_post", "all" (pre and mid interleaved, then final), or names."""
    n = lm.n_layers
    if isinstance(points, str) and points in ("resid_pre", "resid_mid", "resid_post", "all"):
        if points == "resid_post":
            names = [f"blocks.{l}.resid_post" for l in range(n)]
            return names, [f"L{l} post" for l in range(n)]
        if points == "resid_mid":
            names = [f"blocks.{l}.resid_mid" for l in range(n)] + [final_point(lm)]
            return names, [f"L{l} mid" for l in range(n)] + ["final"]
        kinds = ["resid_pre"] if points == "resid_pre" else ["resid_pre", "resid_mid"]
        names = [f"blocks.{l}.{k}" for l in range(n) for k in kinds] + [final_point(lm)]
        labels = [f"L{l} {k[6:]}" for l in range(n) for k in kinds] + ["final"]
        return names, labels
    names = lm.resolve(points)
    bad = [p for p in names if lm.site(p).width != (lm.d_model,)]
    if bad:
        raise ValueError(f"the logit lens reads residual-width points ([batch, pos, d_model]); {bad} are not")
    return names, names


def unembed(lm: LanguageModel, resid: torch.Tensor) -> torch.Tensor:
    """``[..., d_model] -> [..., vocab]``: the model's final norm, unembedding and any soft-capping."""
    normed = lm.get_module(lm.arch.final_norm)(resid)
    logits = lm.get_module(lm.arch.unembed)(normed)
    cap = W.softcap(lm)
    if cap:
        logits = cap * torch.tanh(logits / cap)
    return logits


@dataclass(frozen=True)
class LogitLens(Result):
    """Per residual point (row), prompt and position: what the lens predicts.

    probs, ranks, logits: ``[n_points, batch, n_pos, n_tokens]`` for the tracked tokens
    top_ids, top_probs:   ``[n_points, batch, n_pos]`` the lens's own top-1 token
    kl:                   ``[n_points, batch, n_pos]`` KL(model's final distribution || lens distribution)
    tracked:              ``[batch, n_pos, n_tokens]`` ids tracked (given tokens, or the model's top-1)
    valid:                ``[batch, n_pos]`` False on padding columns
    input_labels:         ``[batch][n_pos]`` the input token at each column
    """

    probs: torch.Tensor
    ranks: torch.Tensor
    logits: torch.Tensor
    top_ids: torch.Tensor
    top_probs: torch.Tensor
    kl: torch.Tensor
    tracked: torch.Tensor
    valid: torch.Tensor
    point_labels: tuple[str, ...]
    point_names: tuple[str, ...]
    input_labels: tuple[tuple[str, ...], ...]
    top_labels: tuple[tuple[tuple[str, ...], ...], ...]
    tracked_labels: tuple[str, ...]
    model_name: str

    def first_layer(self, k: int = 1) -> torch.Tensor:
        """``[batch, n_pos, n_tokens]`` the first row where each tracked token is in the top ``k`` (-1: never)."""
        hit = self.ranks < k
        first = hit.float().argmax(0)
        return torch.where(hit.any(0), first, torch.full_like(first, -1))

    def to_frame(self):
        import pandas as pd

        rows = []
        n_p, batch, n_pos, n_t = self.probs.shape
        first1, first5 = self.first_layer(1), self.first_layer(5)
        for b in range(batch):
            for s in range(n_pos):
                if not self.valid[b, s]:
                    continue
                for i in range(n_p):
                    row = {"prompt": b, "position": s, "input": self.input_labels[b][s], "point": self.point_labels[i],
                           "top1": self.top_labels[i][b][s], "top1_prob": float(self.top_probs[i, b, s]),
                           "kl_to_final": float(self.kl[i, b, s])}
                    for t in range(n_t):
                        name = self.tracked_labels[t] if self.tracked_labels else "final top1"
                        row[f"p({name})"] = float(self.probs[i, b, s, t])
                        row[f"rank({name})"] = int(self.ranks[i, b, s, t])
                    rows.append(row)
        frame = pd.DataFrame(rows)
        frame.attrs["first_top1_row"] = first1.tolist()
        frame.attrs["first_top5_row"] = first5.tolist()
        return frame

    def summary(self):
        """One row per tracked token and position: the first point where it is top-1 / top-5."""
        import pandas as pd

        rows = []
        f1, f5 = self.first_layer(1), self.first_layer(5)
        for b in range(self.probs.shape[1]):
            for s in range(self.probs.shape[2]):
                if not self.valid[b, s]:
                    continue
                for t in range(self.probs.shape[3]):
                    lab = lambda i: self.point_labels[int(i)] if int(i) >= 0 else "never"  # noqa: E731
                    rows.append({"prompt": b, "position": s, "input": self.input_labels[b][s],
                                 "token": self.tracked_labels[t] if self.tracked_labels else "final top1",
                                 "first top-1": lab(f1[b, s, t]), "first top-5": lab(f5[b, s, t]),
                                 "final prob": float(self.probs[-1, b, s, t])})
        return pd.DataFrame(rows)

    def plot(self, ax=None, prompt: int = 0, token: int = 0):
        """Heatmap (points x positions) of the tracked token's probability, annotated with the top-1."""
        valid = self.valid[prompt]
        probs = self.probs[:, prompt, valid, token].numpy()
        notes = [[self.top_labels[i][prompt][s].strip()[:6] for s in range(len(valid)) if valid[s]] for i in range(len(self.point_labels))]
        name = self.tracked_labels[token] if self.tracked_labels else "the final top-1"
        xl = [f"{s}:{self.input_labels[prompt][s]}" for s in range(len(valid)) if valid[s]]
        return heatmap(probs, self.point_labels, xl, f"Logit lens - p({name!r}); text = lens top-1 - {self.model_name}",
                       ax=ax, cmap="Blues", center=False, xlabel="position", cbar="probability", annotations=notes)

    def plot_kl(self, ax=None):
        """KL to the final distribution by point, mean over valid positions."""
        plt = pyplot()
        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 3.2))
        mask = self.valid[None].float()
        kl = (self.kl * mask).sum((1, 2)) / mask.sum((1, 2))
        ax.plot(range(len(kl)), kl.numpy(), marker="o", ms=3)
        ax.set_xticks(range(0, len(kl), max(1, len(kl) // 15)))
        ax.set_xticklabels(list(self.point_labels)[:: max(1, len(kl) // 15)], rotation=60, fontsize=7)
        ax.set_ylabel("KL(final || lens) [nats]")
        ax.set_title(f"Logit lens KL to the final distribution - {self.model_name}", fontsize=9)
        return fig


def logit_lens(lm: LanguageModel, inputs: Any, tokens: Sequence[Any] | Any = None, *,
               points: str | Sequence[str] = "resid_pre", position: int | None = None) -> LogitLens:
    """The logit lens at every residual point of ``points`` (see ``lens_points``).

    inputs:   prompts / token ids, or a Run caching those points at all positions
    tokens:   tokens to track (strings or ids); None tracks the model's own final top-1 at each position
    position: a prompt-relative position (e.g. -1), or None for every position
    """
    names, labels = lens_points(lm, points)
    run = ensure_run(lm, inputs, names)
    batch, seq = run.tokens.shape
    if position is None:
        cols = torch.arange(seq)[None].expand(batch, -1)
        valid = run.attention_mask.bool().cpu() if run.attention_mask is not None else torch.ones(batch, seq, dtype=torch.bool)
    else:
        cols = columns(run, position).cpu()[:, None]
        valid = torch.ones(batch, 1, dtype=torch.bool)
    pick = lambda t: t[torch.arange(batch)[:, None], cols.to(t.device)]  # noqa: E731 [batch, n_pos, ...]
    with torch.no_grad():
        final_logp = pick(run.logits).float().log_softmax(-1)
        if tokens is None:
            tracked = final_logp.argmax(-1, keepdim=True)  # [batch, n_pos, 1]
            tracked_labels: tuple[str, ...] = ()
        else:
            if isinstance(tokens, (str, int)):
                tokens = [tokens]
            ids = [lm.token_id(t) for t in tokens]
            if not ids:
                raise ValueError("tokens is empty; give tokens to track or None for the model's own prediction")
            tracked = torch.tensor(ids)[None, None].expand(batch, cols.shape[1], -1)
            tracked_labels = tuple(token_label(lm, i) for i in ids)
        tracked = tracked.to(final_logp.device)
        out = {k: [] for k in ("probs", "ranks", "logits", "top_ids", "top_probs", "kl")}
        for p in names:
            logits = unembed(lm, pick(run.cache[p])).float()  # [batch, n_pos, vocab]
            logp = logits.log_softmax(-1)
            chosen = logits.gather(-1, tracked)
            out["logits"].append(chosen)
            out["probs"].append(logp.gather(-1, tracked).exp())
            out["ranks"].append((logits[..., None, :] > chosen[..., None]).sum(-1))
            top = logp.max(-1)
            out["top_ids"].append(top.indices)
            out["top_probs"].append(top.values.exp())
            out["kl"].append((final_logp.exp() * (final_logp - logp)).sum(-1))
        res = {k: torch.stack(v).cpu() for k, v in out.items()}
    tok = run.tokens.cpu()
    inputs_lab = tuple(tuple(token_label(lm, int(tok[b, c])) for c in cols[b]) for b in range(batch))
    top_lab = tuple(tuple(tuple(token_label(lm, int(i)) for i in row) for row in layer) for layer in res["top_ids"])
    return LogitLens(res["probs"], res["ranks"], res["logits"], res["top_ids"], res["top_probs"], res["kl"],
                     tracked.cpu(), valid, tuple(labels), tuple(names), inputs_lab, top_lab, tracked_labels, lm.name)
