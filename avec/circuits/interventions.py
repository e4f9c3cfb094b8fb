"""Interventions on the features of an attribution graph, through the core: set a transcoder feature to a
value (0 turns it off; a multiple of its activation turns it up) at chosen positions, run the real model
with the transcoders spliced in (error terms kept, so only what flows from the edited features changes),
and compare the next-token distribution with the clean run.

    res = intervene(lm, clt, prompt, [(layer, pos, feature, 0.0)])      # knock a feature out
    res = intervene(lm, clt, prompt, [(layer, pos, feature, -2.0)], scale=True)   # -2 x its activation
    res.to_frame()   # top tokens before / after, their probabilities and logit changes
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..results import Result


@dataclass(frozen=True, eq=False)
class FeatureIntervention(Result):
    """The clean and the edited last-position next-token distributions.

    edits:      (layer, position, feature, value set) for each edited feature
    activations: each edited feature's activation in the clean run (``[n_edits]``)
    clean_logits, edited_logits: ``[vocab]`` at the last position
    token_strs: id -> string for the tokens shown
    """

    prompt: str
    edits: tuple[tuple[int, int, int, float], ...]
    activations: torch.Tensor
    clean_logits: torch.Tensor
    edited_logits: torch.Tensor
    token_strs: dict
    k: int = 10

    @property
    def kl(self) -> float:
        """KL(clean || edited) of the next-token distributions, in nats."""
        p, q = torch.log_softmax(self.clean_logits.float(), -1), torch.log_softmax(self.edited_logits.float(), -1)
        return float((p.exp() * (p - q)).sum())

    def top(self, which: str = "clean") -> list[tuple[str, float]]:
        logits = self.clean_logits if which == "clean" else self.edited_logits
        probs = torch.softmax(logits.float(), -1)
        v, i = probs.topk(self.k)
        return [(self.token_strs[int(t)], float(p)) for t, p in zip(i, v)]

    def to_frame(self):
        import pandas as pd

        pc, pe = torch.softmax(self.clean_logits.float(), -1), torch.softmax(self.edited_logits.float(), -1)
        ids = sorted(self.token_strs, key=lambda t: -max(float(pc[t]), float(pe[t])))
        return pd.DataFrame([{"token": self.token_strs[t], "p clean": float(pc[t]), "p edited": float(pe[t]),
                              "logit change": float(self.edited_logits[t] - self.clean_logits[t])} for t in ids])

    def to_dict(self) -> dict:
        return {"type": "FeatureIntervention", "prompt": self.prompt, "edits": [list(e) for e in self.edits],
                "activations": self.activations.tolist(), "kl": self.kl, "k": self.k,
                "table": self.to_frame().to_dict(orient="records")}

    def plot(self, ax=None):
        return intervention_plot(self.to_dict(), ax)


def intervention_plot(d: dict, ax=None):
    """Clean and edited probabilities of the ``k`` leading tokens of a ``FeatureIntervention.to_dict()``."""
    import matplotlib.pyplot as plt
    import pandas as pd

    frame = pd.DataFrame(d["table"]).head(d.get("k", 10))
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 3.2))
    x = range(len(frame))
    ax.bar([i - 0.2 for i in x], frame["p clean"], width=0.4, label="clean", color="#64748b")
    ax.bar([i + 0.2 for i in x], frame["p edited"], width=0.4, label="edited", color="#dc2626")
    ax.set_xticks(list(x))
    ax.set_xticklabels([repr(t) for t in frame["token"]], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("next-token probability")
    ax.set_title(f"{len(d['edits'])} feature edit(s); KL {d['kl']:.3f} nats")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def intervene(lm: Any, transcoders: Any, prompt: Any, edits: Sequence[tuple[int, int, int, float]], *,
              scale: bool = False, k: int = 10, prepend_bos: bool | None = None) -> FeatureIntervention:
    """Run ``prompt`` with ``transcoders`` spliced in (error terms kept) and each ``(layer, position, feature,
    value)`` of ``edits`` set: the feature's latent at that position becomes ``value`` (``scale=True``:
    ``value`` times its clean activation). Positions are prompt positions (negative counts from the end),
    counted as ``attribute`` counts them: after the dictionary's training BOS when it is prepended
    (``prepend_bos``, as in ``attribute``).
    ``transcoders`` is a cross-layer / per-layer transcoder module, or one already attached."""
    from ..core.dictionary import AttachedDictionary
    from ..dictionaries.features import clamp
    from .attribution import _strs, _tokens, with_bos

    ids = _tokens(lm, prompt)
    if not edits:
        raise ValueError("no edits given: give (layer, position, feature, value) tuples")
    attached = transcoders if isinstance(transcoders, AttachedDictionary) else None
    d = attached or lm.add_dictionary(transcoders)
    try:
        ids = with_bos(lm, ids, d.module, prepend_bos)
        n = ids.shape[1]
        n_layers = len(d.reads)
        norm = []
        for e in edits:
            if len(e) != 4:
                raise ValueError(f"an edit is (layer, position, feature, value), got {e!r}")
            layer, pos, f, v = e
            if not 0 <= int(layer) < n_layers:
                raise ValueError(f"layer {layer} is out of range: the dictionary has {n_layers} layer(s) (0..{n_layers - 1})")
            if not -n <= int(pos) < n:
                raise ValueError(f"position {pos} is out of range for a prompt of {n} tokens")
            norm.append((int(layer), int(pos) % n, int(f), float(v)))
        with torch.no_grad():
            clean = lm.run(ids, cache=sorted({d.point("latents", l) for l, *_ in norm}))
        acts = torch.stack([clean.cache[d.point("latents", l)][0, p, f].float() for l, p, f, _ in norm])
        values = [(v * float(a)) if scale else v for (_, _, _, v), a in zip(norm, acts)]
        ivs = [clamp(f"{d.reads[l]}.{d.name}", f, value, positions=p) for (l, p, f, _), value in zip(norm, values)]
        with torch.no_grad():
            edited = lm.run(ids, interventions=ivs)
        shown = set(clean.logits[0, -1].float().topk(k).indices.tolist()) | set(edited.logits[0, -1].float().topk(k).indices.tolist())
        strs = dict(zip(sorted(shown), _strs(lm, torch.tensor(sorted(shown)))))
        return FeatureIntervention(
            prompt=prompt if isinstance(prompt, str) else "".join(_strs(lm, ids[0])),
            edits=tuple((l, p, f, v) for (l, p, f, _), v in zip(norm, values)), activations=acts,
            clean_logits=clean.logits[0, -1].detach().float(), edited_logits=edited.logits[0, -1].detach().float(),
            token_strs=strs, k=k)
    finally:
        if attached is None:
            lm.remove_dictionary(d)
