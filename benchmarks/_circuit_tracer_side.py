"""The circuit-tracer half of ``circuit_tracer_compare.py``: run by the separate venv's python (it imports
circuit-tracer, never avec), one task per process, reading a JSON request and writing safetensors + JSON.

    /work/venv-ct/bin/python benchmarks/_circuit_tracer_side.py TASK REQUEST.json

Tasks (the request's keys in brackets):
    export     the GGUF dequantised by this venv's transformers, saved as a Hugging Face folder [gguf_dir,
               gguf_file, out]
    forward    the model's logits and every layer's MLP input / output, and circuit-tracer's reconstruction
               of each MLP output by the transcoders [model, transcoders, ids, out]
    graph      circuit-tracer's attribution graph, timed, with the peak resident memory while it ran [model,
               transcoders, ids, max_feature_nodes, batch_size, out, prune]
    write      a small random transcoder set and CLT written by circuit-tracer's own writers
               (``to_safetensors``), with their activations and reconstructions on random inputs [out]
    tiny       a tiny random Llama and transcoder set, and circuit-tracer's graph through them [out, ids, write:
               also the ``write`` task into out/written]
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing from the hub: the model and transcoders are local folders
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402


def _rss_peak_reset() -> None:
    """Reset the process's peak resident size (VmHWM), so that the next read is the peak of what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _vm(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # MB
    return float("nan")


def _transcoders(folder: str):
    import yaml
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    conf = yaml.safe_load((Path(folder) / "config.yaml").read_text())
    kw = dict(feature_input_hook=conf["feature_input_hook"], feature_output_hook=conf["feature_output_hook"],
              device=torch.device("cpu"), dtype=torch.float32, lazy_encoder=False, lazy_decoder=False)
    if conf["model_kind"] == "cross_layer_transcoder":
        return load_clt(folder, scan=conf.get("scan", folder), **kw)
    paths = {int(p.stem.split("_")[1]): str(p) for p in Path(folder).glob("layer_*.safetensors")}
    return load_transcoder_set(paths, scan=conf.get("scan", folder), **kw)


def _model(model: str, transcoders: str):
    from circuit_tracer import ReplacementModel

    return ReplacementModel.from_pretrained_and_transcoders(model_name=model, transcoders=_transcoders(transcoders),
                                                            backend="nnsight", device=torch.device("cpu"),
                                                            dtype=torch.float32)


def export(req: dict) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(req["gguf_dir"], gguf_file=req["gguf_file"])
    m = AutoModelForCausalLM.from_pretrained(req["gguf_dir"], gguf_file=req["gguf_file"], dtype=torch.float32)
    m.save_pretrained(req["out"])
    tok.save_pretrained(req["out"])
    return {"architecture": type(m).__name__, "bos_token_id": tok.bos_token_id}


def forward(req: dict) -> dict:
    from nnsight import save

    model = _model(req["model"], req["transcoders"])
    ids = torch.tensor(req["ids"])
    with torch.no_grad():
        with model.trace(ids):
            ins, outs = [], []
            for a, b in zip(model.feature_input_locs, model.feature_output_locs):  # nnsight: in execution order
                ins.append(a.output)
                outs.append(b.output)
            mlp_in = save(torch.cat(ins, dim=0))        # [L, n, d]
            mlp_out = save(torch.cat(outs, dim=0))
            logits = save(model.output.logits)
    mlp_in, mlp_out = mlp_in.float(), mlp_out.float()
    with torch.no_grad():
        # circuit-tracer's own reconstruction (what its error nodes subtract), without its zeroing of position 0
        parts = model.transcoders.compute_attribution_components(mlp_in, zero_positions=slice(0, 0))
        acts = torch.stack([model.transcoders.encode_layer(mlp_in[l], l) for l in range(mlp_in.shape[0])])
    save_file({"logits": logits[0].float().contiguous(), "mlp_in": mlp_in.contiguous(), "mlp_out": mlp_out.contiguous(),
               "reconstruction": parts["reconstruction"].float().contiguous(), "activations": acts.float().contiguous()},
              req["out"])
    return {"torch": torch.__version__}


def graph(req: dict) -> dict:
    from circuit_tracer import attribute
    from circuit_tracer.graph import prune_graph

    torch.set_num_threads(int(req.get("threads", 1)))
    t = time.perf_counter()
    model = _model(req["model"], req["transcoders"])
    load_s = time.perf_counter() - t
    ids = torch.tensor(req["ids"])
    rss0 = _vm("VmRSS")
    _rss_peak_reset()
    t = time.perf_counter()
    g = attribute(ids, model, max_n_logits=req.get("max_n_logits", 10), desired_logit_prob=req.get("desired_logit_prob", 0.95),
                  batch_size=req["batch_size"], max_feature_nodes=req.get("max_feature_nodes"), verbose=False)
    seconds = time.perf_counter() - t
    peak = _vm("VmHWM")
    out = {"adjacency": g.adjacency_matrix.float().contiguous(), "active_features": g.active_features.long().contiguous(),
           "activation_values": g.activation_values.float().contiguous(),
           "selected_features": g.selected_features.long().contiguous(), "input_tokens": g.input_tokens.long().contiguous(),
           "logit_ids": torch.tensor([int(x.vocab_idx) for x in g.logit_targets], dtype=torch.long),
           "logit_probs": g.logit_probabilities.float().contiguous()}
    for nt, et in req.get("prune", []):
        pr = prune_graph(g, node_threshold=nt, edge_threshold=et)
        out[f"prune_nodes_{nt}_{et}"] = pr.node_mask.to(torch.uint8).contiguous()
        out[f"prune_edges_{nt}_{et}"] = pr.edge_mask.to(torch.uint8).contiguous()
    save_file(out, req["out"])
    return {"seconds": seconds, "load_seconds": load_s, "rss_before_mb": rss0, "peak_rss_mb": peak,
            "threads": torch.get_num_threads(), "n_active": int(g.active_features.shape[0]),
            "n_selected": int(g.selected_features.shape[0])}


def write(req: dict) -> dict:
    """Random small transcoders written by circuit-tracer's own ``to_safetensors``, with what circuit-tracer computes
    from them (activations, reconstructions), for avec's reader to reproduce. The ``config.yaml`` beside them is the
    one circuit-tracer's cache writer (``save_transcoders_to_cache``) would put there, written here with the same
    yaml.dump: that writer itself only caches transcoders it downloads from the hub."""
    import yaml
    from circuit_tracer.transcoder.activation_functions import JumpReLU
    from circuit_tracer.transcoder.cross_layer_transcoder import CrossLayerTranscoder
    from circuit_tracer.transcoder.single_layer_transcoder import SingleLayerTranscoder, TranscoderSet

    torch.manual_seed(0)
    out = Path(req["out"])
    L, d, f = 3, 8, 16
    x = torch.randn(L, 5, d)
    res = {}
    # a per-layer set: JumpReLU, with skip connections
    tcs = {}
    for l in range(L):
        tc = SingleLayerTranscoder(d, f, JumpReLU(torch.rand(f) * 0.3, 0.1), l, skip_connection=True,
                                   device=torch.device("cpu"), dtype=torch.float32)
        with torch.no_grad():
            for p in tc.parameters():
                p.copy_(torch.randn_like(p) * 0.5)
            tc.activation_function.threshold.copy_(torch.rand(f) * 0.3)
        tcs[l] = tc
    ts = TranscoderSet(tcs, feature_input_hook="mlp.hook_in", feature_output_hook="hook_mlp_out", scan="ct-written-set")
    ts.to_safetensors(str(out / "set"))
    (out / "set" / "config.yaml").write_text(yaml.dump({"model_kind": "transcoder_set", "feature_input_hook": "mlp.hook_in",
                                                         "feature_output_hook": "hook_mlp_out", "scan": "ct-written-set"}))
    with torch.no_grad():
        res["set_acts"] = torch.stack([ts.encode_layer(x[l], l) for l in range(L)])
        res["set_recon"] = ts.decode(res["set_acts"], x)
    # a per-layer set: ReLU (no threshold tensor), no skip
    tcs = {}
    for l in range(L):
        tc = SingleLayerTranscoder(d, f, torch.nn.functional.relu, l, device=torch.device("cpu"), dtype=torch.float32)
        with torch.no_grad():
            for p in tc.parameters():
                p.copy_(torch.randn_like(p) * 0.5)
        tcs[l] = tc
    ts = TranscoderSet(tcs, feature_input_hook="hook_resid_mid", feature_output_hook="hook_mlp_out", scan="ct-written-relu")
    ts.to_safetensors(str(out / "set_relu"))
    (out / "set_relu" / "config.yaml").write_text(yaml.dump({"model_kind": "transcoder_set", "feature_input_hook": "hook_resid_mid",
                                                              "feature_output_hook": "hook_mlp_out", "scan": "ct-written-relu"}))
    with torch.no_grad():
        res["set_relu_acts"] = torch.stack([ts.encode_layer(x[l], l) for l in range(L)])
        res["set_relu_recon"] = ts.decode(res["set_relu_acts"], None)
    # a cross-layer transcoder: JumpReLU
    clt = CrossLayerTranscoder(n_layers=L, d_transcoder=f, d_model=d, activation_function="jump_relu", lazy_decoder=False,
                               lazy_encoder=False, feature_input_hook="hook_resid_mid", feature_output_hook="hook_mlp_out",
                               device=torch.device("cpu"), dtype=torch.float32)
    with torch.no_grad():
        for p in clt.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        clt.activation_function.threshold.copy_(torch.rand_like(clt.activation_function.threshold) * 0.3)
    clt.to_safetensors(str(out / "clt"))
    (out / "clt" / "config.yaml").write_text(yaml.dump({"model_kind": "cross_layer_transcoder",
                                                         "feature_input_hook": "hook_resid_mid",
                                                         "feature_output_hook": "hook_mlp_out", "scan": "ct-written-clt"}))
    with torch.no_grad():
        res["clt_acts"] = clt.encode(x)
        res["clt_recon"] = clt.decode(res["clt_acts"])
    res["inputs"] = x
    save_file({k: v.float().contiguous() for k, v in res.items()}, str(out / "expected.safetensors"))
    return {"files": sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())}


def tiny(req: dict) -> dict:
    """A tiny random Llama (saved as a Hugging Face folder with a word-level tokenizer whose BOS is id 1), a random
    per-layer JumpReLU set written by circuit-tracer, and circuit-tracer's attribution graph of ``ids`` through
    them: for a fast cross-check of avec's graphs (tests/test_circuit_tracer_written.py)."""
    import yaml
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from circuit_tracer.transcoder.activation_functions import JumpReLU
    from circuit_tracer.transcoder.single_layer_transcoder import SingleLayerTranscoder, TranscoderSet

    out = Path(req["out"])
    torch.manual_seed(int(req.get("seed", 0)))
    V, d, L, f = 101, 64, 3, 48
    cfg = LlamaConfig(hidden_size=d, intermediate_size=96, num_hidden_layers=L, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, vocab_size=V, max_position_embeddings=128, bos_token_id=1,
                      eos_token_id=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms away from 1, so that frozen norm scales matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(out / "model")
    vocab = {f"w{i}": i for i in range(V)}
    vocab = {("<bos>" if i == 1 else "<eos>" if i == 2 else w): i for w, i in vocab.items()}
    t = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<bos>", eos_token="<eos>", unk_token="w0").save_pretrained(
        out / "model")
    tcs = {}
    for l in range(L):
        tc = SingleLayerTranscoder(d, f, JumpReLU(torch.zeros(f), 0.1), l, device=torch.device("cpu"), dtype=torch.float32)
        with torch.no_grad():
            tc.W_enc.copy_(torch.randn(f, d) / d ** 0.5 * 3)
            tc.W_dec.copy_(torch.randn(f, d) * 0.1)
            tc.b_enc.copy_(torch.randn(f) * 0.2 - 0.3)
            tc.b_dec.copy_(torch.randn(d) * 0.05)
            tc.activation_function.threshold.copy_(torch.rand(f) * 0.2)
        tcs[l] = tc
    TranscoderSet(tcs, feature_input_hook="mlp.hook_in", feature_output_hook="hook_mlp_out", scan="tiny").to_safetensors(
        str(out / "tc"))
    (out / "tc" / "config.yaml").write_text(yaml.dump({"model_kind": "transcoder_set", "feature_input_hook": "mlp.hook_in",
                                                        "feature_output_hook": "hook_mlp_out", "scan": "tiny"}))
    res = graph({"model": str(out / "model"), "transcoders": str(out / "tc"), "ids": req["ids"],
                 "batch_size": req.get("batch_size", 32), "out": str(out / "graph.safetensors")})
    if req.get("write"):  # and the written-files check, in the same process (one circuit-tracer import for both)
        res["written"] = write({"out": str(out / "written")})
    return res


if __name__ == "__main__":
    task, request = sys.argv[1], json.loads(Path(sys.argv[2]).read_text())
    torch.set_num_threads(int(request.get("threads", 1)))
    result = {"export": export, "forward": forward, "graph": graph, "write": write, "tiny": tiny}[task](request)
    print("RESULT " + json.dumps(result))
