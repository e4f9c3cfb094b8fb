"""Transcoder folders written by circuit-tracer itself (its ``to_safetensors`` writers), read by avec.

``tests/data/circuit_tracer_written`` was written by circuit-tracer 0.5.0 (``benchmarks/_circuit_tracer_side.py
write``, in the separate venv of ``benchmarks/circuit_tracer_compare.py``): a JumpReLU per-layer set with skip
connections (``set``), a ReLU set (``set_relu``) and a JumpReLU cross-layer transcoder (``clt``), 3 layers,
d_model 8, 16 features, random weights, with the activations and reconstructions circuit-tracer computed from
them on random inputs (``expected.safetensors``). The last test is a cross-check against the installed
circuit-tracer: it is skipped where its venv is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from avec.dictionaries.circuit_tracer_io import load_circuit_tracer, save_circuit_tracer

DATA = Path(__file__).parent / "data" / "circuit_tracer_written"
ROOT = Path(__file__).resolve().parents[1]
CT_PYTHON = os.environ.get("AVEC_CT_PYTHON", "/work/venv-ct/bin/python")
NAMES = ("set", "set_relu", "clt")


def _avec_values(tc, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations [L, pos, d_sae] and reconstructions [L, pos, d] of inputs x [L, pos, d], layer l reading x[l]."""
    with torch.no_grad():
        return tc.reconstruct(x)


def _check_folder(folder: Path) -> None:
    exp = load_file(str(folder / "expected.safetensors"))
    x = exp["inputs"]
    kinds = {}
    for name in NAMES:
        tc = load_circuit_tracer(folder / name)
        acts, recon = _avec_values(tc, x)
        want_a, want_r = exp[f"{name}_acts"], exp[f"{name}_recon"]
        # the values are not degenerate: some features fire, most do not
        assert 0 < int((want_a > 0).sum()) < want_a.numel() // 2
        torch.testing.assert_close(acts, want_a, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(recon, want_r, atol=1e-5, rtol=1e-5)
        kinds[name] = (tc.cfg.arch, tc.cfg.skip, tc.cfg.is_cross_layer, tc.cfg.n_layers)
    assert kinds == {"set": ("jumprelu", True, False, 3), "set_relu": ("relu", False, False, 3),
                     "clt": ("jumprelu", False, True, 3)}


def test_folders_circuit_tracer_wrote_compute_its_activations_and_reconstructions_in_avec():
    _check_folder(DATA)


@pytest.mark.parametrize("name", NAMES)
def test_avec_rewrites_circuit_tracers_files_tensor_for_tensor(name, tmp_path):
    """avec's writer puts the same tensors (names, shapes, values) in the same files as circuit-tracer's."""
    tc = load_circuit_tracer(DATA / name)
    save_circuit_tracer(tc, tmp_path / name, model_name="m")
    theirs = sorted(p.name for p in (DATA / name).glob("*.safetensors"))
    assert sorted(p.name for p in (tmp_path / name).glob("*.safetensors")) == theirs
    for fname in theirs:
        a, b = load_file(str(DATA / name / fname)), load_file(str(tmp_path / name / fname))
        assert sorted(a) == sorted(b), fname
        for k in a:
            assert torch.equal(a[k], b[k]), (fname, k)


# cross-checks against the installed circuit-tracer (its own venv; see benchmarks/circuit_tracer_compare.py): one
# circuit-tracer process writes the small files and makes the graph of a prompt through a tiny random Llama
needs_ct = pytest.mark.skipif(not Path(CT_PYTHON).exists(), reason=f"no circuit-tracer venv at {CT_PYTHON} (cross-check only)")
IDS = [1, 5, 17, 33, 8, 91, 40, 12]  # BOS (id 1) first


@pytest.fixture(scope="module")
def ct_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("ct")
    req = out / "req.json"
    req.write_text(json.dumps({"out": str(out), "ids": [IDS], "write": True}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([CT_PYTHON, str(ROOT / "benchmarks" / "_circuit_tracer_side.py"), "tiny", str(req)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return out


@needs_ct
def test_cross_check_files_the_installed_circuit_tracer_writes_load_in_avec(ct_out):
    _check_folder(ct_out / "written")


@needs_ct
def test_cross_check_graph_edges_equal_circuit_tracers(ct_out):
    """Same model (a folder circuit-tracer's transformers saved), same transcoders (files circuit-tracer wrote), same
    ids: every edge between nodes both graphs have agrees. circuit-tracer zeroes the features and error of position 0
    (the BOS): avec keeps them as nodes, so edges out of them are compared apart."""
    import avec
    from avec.circuits import attribute

    c = load_file(str(ct_out / "graph.safetensors"))
    lm = avec.load(ct_out / "model")
    tc = load_circuit_tracer(ct_out / "tc", lm=lm)
    g = attribute(lm, tc, torch.tensor(IDS), progress=False, prepend_bos=False)
    L, n = lm.n_layers, len(IDS)
    assert torch.equal(c["input_tokens"], g.token_ids)
    assert torch.equal(c["logit_ids"], g.logit_ids)
    torch.testing.assert_close(c["logit_probs"], g.logit_probs, atol=1e-6, rtol=1e-5)
    ct_feats = c["active_features"][c["selected_features"]]
    assert not bool((ct_feats[:, 1] == 0).any())                      # circuit-tracer: no feature at the BOS
    off0 = g.features[:, 1] != 0
    assert int((~off0).sum()) > 0                                      # avec: the BOS's features are nodes
    assert torch.equal(g.features[off0], ct_feats)                     # the rest: the same, in the same order
    torch.testing.assert_close(g.activations[off0], c["activation_values"][c["selected_features"]], atol=1e-5, rtol=1e-5)
    # avec's node index -> circuit-tracer's (-1: the BOS's features)
    F = g.n_features
    m = torch.cat([torch.where(off0, off0.long().cumsum(0) - 1, torch.tensor(-1)), ct_feats.shape[0] + torch.arange(g.n_nodes - F)])
    bos_src = torch.zeros(g.n_nodes, dtype=torch.bool)
    bos_src[:F] = ~off0
    bos_src[g.offsets["error"] + torch.arange(L) * n] = True          # the BOS's error nodes
    keep = ~bos_src[g.sources]
    A = c["adjacency"]
    mine = torch.zeros_like(A)
    mine[m[g.targets[keep]], m[g.sources[keep]]] = g.weights[keep]
    assert bool((A != 0).sum() > 1000)
    assert float(A[:, ct_feats.shape[0] + torch.arange(L) * n].abs().max()) == 0.0  # its BOS errors are zero vectors
    torch.testing.assert_close(mine, A, atol=1e-5 * float(A.abs().max()), rtol=1e-4)
    # and avec's edges out of the BOS's nodes are real: they carry part of what reaches the attributed nodes
    assert float(g.weights[~keep].abs().sum()) > 0
    # with circuit-tracer's convention (position 0's MLP outputs constants) the two graphs are the same, node for node
    h = attribute(lm, tc, torch.tensor(IDS), progress=False, prepend_bos=False, first_position_nodes=False)
    assert torch.equal(h.features, ct_feats) and h.n_nodes == A.shape[0]
    same = torch.zeros_like(A)
    same[h.targets, h.sources] = h.weights
    torch.testing.assert_close(same, A, atol=1e-5 * float(A.abs().max()), rtol=1e-4)
