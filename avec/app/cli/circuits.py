"""CLI: ``avec graph PROMPT --transcoders PATH --out DIR``: an attribution graph of one prompt, written as
the circuit-tracer / Neuronpedia graph JSON (``graph.json``) and an interactive page (``graph.html``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from ...io import atomic_write_text, check_out_option


def register(app: typer.Typer) -> None:
    @app.command("graph")
    def graph_cmd(prompt: str = typer.Argument(..., help="the prompt whose next token is attributed"),
                  transcoders: str = typer.Option(..., help="a transcoder set covering every layer: an avec "
                                                  ".safetensors file or a circuit-tracer folder"),
                  out: str = typer.Option(..., help="output folder (graph.json, graph.html, summary.json)"),
                  model: str = typer.Option("smollm2"),
                  node_threshold: float = typer.Option(0.8, help="keep nodes carrying this share of the influence"),
                  edge_threshold: float = typer.Option(0.98, help="keep edges carrying this share of the influence"),
                  max_features: Optional[int] = typer.Option(None, help="attribute at most this many features "
                                                             "(the most influential first)"),
                  batch_size: int = typer.Option(32, help="targets per backward pass"),
                  max_memory_gb: float = typer.Option(8.0, help="refuse a prompt whose edge rows would take more "
                                                      "(the error says which --max-features fits)"),
                  dashboard_contexts: int = typer.Option(32, help="held-out contexts (32 tokens) the feature nodes' "
                                                         "dashboards read their top examples from (0: no dashboards)"),
                  threads: Optional[int] = typer.Option(None, help="torch threads")) -> None:
        """Attribution graph of PROMPT through the local replacement model made with TRANSCODERS."""
        folder = check_out_option(out, folder=True)
        for name, v in (("--node-threshold", node_threshold), ("--edge-threshold", edge_threshold)):
            if not 0.0 < v <= 1.0:
                raise typer.BadParameter(f"{v}: a share of the influence, in (0, 1]", param_hint=name)
        if not 0 <= dashboard_contexts <= 4096:
            raise typer.BadParameter(f"{dashboard_contexts}: allowed 0 (no dashboards) .. 4096",
                                     param_hint="--dashboard-contexts")
        if not max_memory_gb > 0:
            raise typer.BadParameter(f"{max_memory_gb}: a positive number of gigabytes", param_hint="--max-memory-gb")
        if not Path(transcoders).exists():
            raise typer.BadParameter(f"no such file or folder: {transcoders}", param_hint="--transcoders")
        if not prompt.strip():
            raise typer.BadParameter("the prompt is empty", param_hint="PROMPT")
        import torch

        from .transcoders import _load_any
        from ...models import load
        from ...circuits.attribution import attribute
        from ...circuits.view import save_graph_page

        if threads:
            torch.set_num_threads(threads)
        lm = load(model)
        tc = _load_any(transcoders, lm)
        t = time.perf_counter()
        g = attribute(lm, tc, prompt, batch_size=batch_size, max_feature_nodes=max_features, max_memory_gb=max_memory_gb)
        seconds = time.perf_counter() - t
        d = g.to_dict(node_threshold, edge_threshold, slug=folder.name or "graph")
        atomic_write_text(folder / "graph.json", json.dumps(d))
        pages = None
        if dashboard_contexts:  # clicking a feature node shows its top contexts and logit effects
            from ...circuits.dashboards import graph_dashboards
            from ...dictionaries.heldout import heldout_contexts

            texts = heldout_contexts(lm.tokenizer, dashboard_contexts, 32)
            pages = graph_dashboards(lm, tc, g, texts, node_threshold=node_threshold, edge_threshold=edge_threshold,
                                     progress=True)
        save_graph_page(g, folder / "graph.html", node_threshold=node_threshold, edge_threshold=edge_threshold,
                        dashboards=pages)
        from ..render import graph_summary_line

        info = d["metadata"]["info"]  # the summary and the printed line come from the JSON the frontends read
        summary = {"prompt": prompt, "model": model, "transcoders": str(transcoders), "seconds": round(seconds, 2),
                   "active_features": info["n_active_features"], "feature_nodes": info["n_feature_nodes"],
                   "edges": info["n_edges"], "kept_nodes": info["kept_nodes"], "kept_edges": info["kept_edges"],
                   "json_nodes": len(d["nodes"]), "json_links": len(d["links"]),
                   "dashboards": len(pages or {}), "dashboard_contexts": dashboard_contexts,
                   "replacement_score": info["replacement_score"], "completeness_score": info["completeness_score"],
                   "logits": info["logits"]}
        atomic_write_text(folder / "summary.json", json.dumps(summary, indent=1))
        typer.echo(f"{folder / 'graph.html'}: {graph_summary_line(d)}; {seconds:.1f} s")
