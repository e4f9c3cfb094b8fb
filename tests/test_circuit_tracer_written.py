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
    L = x.shape[0]
    with torch.no_grad():
        acts = torch.stack([tc.encode_layer(x[l], l) for l in range(L)])
        recon = torch.stack([tc.decode_layer([acts[i] for i in tc.sources(l)], l) for l in range(L)])
        if tc.cfg.skip:
            recon = recon + torch.stack([tc.skip_layer(x[l], l) for l in range(L)])
    return acts, recon


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


# cross-check against the installed circuit-tracer (its own venv; see benchmarks/circuit_tracer_compare.py)
@pytest.mark.skipif(not Path(CT_PYTHON).exists(), reason=f"no circuit-tracer venv at {CT_PYTHON} (cross-check only)")
def test_cross_check_files_the_installed_circuit_tracer_writes_load_in_avec(tmp_path):
    req = tmp_path / "req.json"
    req.write_text(json.dumps({"out": str(tmp_path / "out")}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([CT_PYTHON, str(ROOT / "benchmarks" / "_circuit_tracer_side.py"), "write", str(req)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    _check_folder(tmp_path / "out")
