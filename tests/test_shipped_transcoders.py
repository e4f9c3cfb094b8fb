"""Shipping a transcoder set (tools/ship_transcoders.py's fp16 copy) and loading it (load_shipped): weights come
back float32 within fp16 rounding, thresholds exactly, the BOS recorded; the server's graph page offers a
transcoder set shipped for its model, and refuses it on a page that reads SAEs only. A fake shipped folder
holds a random set for a tiny model, so this runs whatever is really shipped."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from avec.app.server import dictionaries as D
from avec.app.server import inputs as I
from avec.dictionaries import shipped
from avec.dictionaries.transcoder import Transcoders

from _tiny import tiny_lm
from test_circuits_attribution import random_clt

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("ship_transcoders", ROOT / "tools" / "ship_transcoders.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture()
def fake_shipped(tmp_path, monkeypatch):
    lm = tiny_lm("llama")
    plt = random_clt(lm, seed=2, cross_layer=False)
    plt.save(tmp_path / "plt.safetensors")
    folder = tmp_path / "shipped"
    folder.mkdir()
    _tool().fp16_copy(tmp_path / "plt.safetensors", folder / "tiny-plt.safetensors", bos=5)
    (folder / "tiny-plt.json").write_text(json.dumps({
        "name": "tiny-plt", "kind": "transcoders", "model_id": lm.model_id,
        "structure": {"kind": "plt", "reads": "mlp_in", "writes": "mlp_out", "layers": list(range(lm.n_layers)),
                      "width": plt.d_sae}}))
    monkeypatch.setattr(shipped, "SHIPPED_DIR", folder)
    return lm, plt


def test_fp16_copy_loads_back_as_float32_with_its_bos(fake_shipped):
    lm, plt = fake_shipped
    assert "tiny-plt" in shipped.available()
    tc = shipped.load_shipped("tiny-plt")
    assert isinstance(tc, Transcoders) and tc.W_enc.dtype == torch.float32 and tc.cfg.bos == 5
    assert tc.cfg.dtype == "float32" and tc.cfg.arch == plt.cfg.arch == "jumprelu"
    assert torch.equal(tc.threshold, plt.threshold)  # stored fp32: not rounded
    assert torch.equal(tc.W_enc, plt.W_enc.half().float()) and not torch.equal(tc.W_enc, plt.W_enc)
    x = torch.randn(lm.n_layers, 7, lm.d_model)
    assert torch.allclose(tc(x), plt(x), atol=5e-2, rtol=1e-2)
    half = shipped.load_shipped("tiny-plt", dtype="float16")
    assert half.W_enc.dtype == torch.float16
    with pytest.raises(ValueError, match="dtype='int8'"):
        shipped.load_shipped("tiny-plt", dtype="int8")


def test_the_cli_reads_an_fp16_file_as_the_shipped_loader_does(fake_shipped):
    """`avec graph --transcoders FILE` / `avec transcoder eval` on a half-precision file: float32 weights, and the
    fp32 thresholds read as stored (not through an fp16 module, which would round them)."""
    from avec.app.cli.transcoders import _load_any

    lm, plt = fake_shipped
    tc = _load_any(str(shipped.SHIPPED_DIR / "tiny-plt.safetensors"), lm)
    assert all(p.dtype == torch.float32 for p in tc.parameters())
    assert torch.equal(tc.threshold, plt.threshold)
    ref = shipped.load_shipped("tiny-plt")
    assert all(torch.equal(a, b) for a, b in zip(tc.state_dict().values(), ref.state_dict().values()))
    assert _load_any(str(fake_shipped_path := shipped.SHIPPED_DIR.parent / "plt.safetensors"), lm).W_enc.dtype == \
        torch.float32 and fake_shipped_path.exists()
    from avec.dictionaries.transcoder import load_transcoder

    with pytest.raises(ValueError, match="dtype='int8'; allowed: float32"):
        load_transcoder(fake_shipped_path, dtype="int8")


def test_the_graph_page_offers_a_shipped_transcoder_set(fake_shipped):
    lm, plt = fake_shipped

    class State:
        data_dir = None

    found = D.list_sources(State, lm.model_id, ("transcoder",))
    assert [s.name for s in found] == ["shipped:tiny-plt"]
    src = found[0]
    assert src.kind == "transcoder" and src.layers == lm.n_layers and src.reads[1] == "blocks.1.mlp_in"
    assert D.resolve(State, "shipped:tiny-plt", lm.model_id, ("transcoder",)) == src
    assert D.list_sources(State, "another-model", ("transcoder",)) == []
    with pytest.raises(I.BadInput, match="is a transcoder set; this page reads SAEs"):
        D.resolve(State, "shipped:tiny-plt", lm.model_id, ("sae",))
    with pytest.raises(I.BadInput, match="is not a shipped SAE or transcoder set of this model"):
        D.resolve(State, "shipped:tiny-plt", "another-model", ("transcoder",))


def test_the_tour_section_says_when_the_set_is_not_shipped(tmp_path, monkeypatch):
    from avec.app.tour import SECTIONS
    from avec.app.tour import circuits as tour_circuits
    from avec.app.tour.context import TourContext

    assert all(entry in SECTIONS for entry in tour_circuits.SECTIONS)
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path)  # nothing shipped

    class Section:
        texts = []

        def text(self, t):
            self.texts.append(t)

    s = Section()
    tour_circuits.two_hop_section(TourContext(model_name="tiny", _models={"tiny": tiny_lm("llama")}), s)
    assert "is not shipped with this copy of avec" in s.texts[0]
