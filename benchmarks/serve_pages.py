"""Wall time of the web app's long pages on the real model, each request timed as a page makes it:

    python benchmarks/serve_pages.py [--model smollm2] [--contexts 256] [--threads 2]

* activation patching: the page's default pair, three points over every layer and position;
* SAE features (the shipped SAE): the strongest latents of a prompt; the first feature page (cuts the held-out
  contexts and reads the SAE over them, once per server); a second feature page (from memory); steering with
  the feature (20 tokens, steered and unsteered in one batch);
* an attribution graph through a random cross-layer transcoder (64 JumpReLU features per layer; no trained one
  for SmolLM2 ships yet: this measures the machinery, not a meaningful graph), 200 feature nodes.

Prints seconds per request and the latent index's size. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=1800) as r:
        return json.loads(r.read())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--contexts", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    import avec
    from avec.app.server import BackgroundServer, create_app
    from avec.dictionaries.clt import CrossLayerTranscoder, layer_points
    from avec.dictionaries.shipped import available

    lm = avec.load(args.model)
    folder = Path(tempfile.mkdtemp())
    clt = CrossLayerTranscoder(arch="jumprelu", d_in=lm.d_model, d_sae=64, n_layers=lm.n_layers,
                               **layer_points(lm.n_layers, reads="resid_mid"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for w in clt.W_dec:
            w.copy_(torch.randn(w.shape, generator=g) * 0.02)
        clt.threshold.fill_(0.05)
    clt.save(folder / "clt.safetensors")
    sae = f"shipped:{available()[0]}"
    rows = []
    with BackgroundServer(create_app(lm, data_dir=folder, feature_contexts=args.contexts)) as s:
        def timed(what: str, path: str, body: dict) -> dict:
            t = time.perf_counter()
            d = post(s.url + path, body)
            rows.append((what, time.perf_counter() - t))
            print(f"{what:60s} {rows[-1][1]:8.2f} s", file=sys.stderr)
            return d

        d = timed("patching: 3 points x all layers x positions", "/api/patching/run",
                  {"clean": "The capital of France is", "corrupted": "The capital of Germany is", "answer": " Paris",
                   "wrong": " Berlin"})
        cells = sum(len(r["values"]) * len(r["values"][0]) for r in d["results"].values())
        p = timed("features: strongest latents of a 13-token prompt", "/api/features/prompt",
                  {"dictionary": sae, "prompt": "The Eiffel Tower is in Paris, the capital of France."})
        f = p["features"]["top_ids"][6][0]
        first = timed(f"features: first feature page ({args.contexts} contexts x 32 tokens)", "/api/features/feature",
                      {"dictionary": sae, "feature": f})
        timed("features: another feature page (from memory)", "/api/features/feature", {"dictionary": sae, "feature": f + 1})
        timed("features: steer with the feature, 20 tokens", "/api/features/steer",
              {"dictionary": sae, "feature": f, "prompt": "I think that", "coeff": 4 * first["examples"]["max"],
               "max_new_tokens": 20})
        gr = timed("graph: random CLT, 200 feature nodes, 6-token prompt", "/api/graph/run",
                   {"prompt": "The capital of France is", "transcoder": "clt.safetensors", "max_feature_nodes": 200})
    print(json.dumps({"model": lm.name, "threads": args.threads, "patching_cells": cells,
                      "latent_index": first["contexts"], "graph": gr["summary"] | {"logits": None},
                      "seconds": {w: round(t, 2) for w, t in rows}}, indent=1))


if __name__ == "__main__":
    main()
