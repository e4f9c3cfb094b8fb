"""Bad steering-vector files (safetensors from ``save``, control-vector GGUF) get clear errors naming the
file and what is expected; nothing is silently reshaped, cast or dropped."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from avec import Front
from avec.steering import SteeringVector, Term

from _tiny import tiny_lm


@pytest.fixture(scope="module")
def lm():
    return tiny_lm("llama")


def good(lm, shape=None):
    g = torch.Generator().manual_seed(0)
    return SteeringVector.make(lm, "blocks.1.resid_pre", torch.randn(*(shape or (3, lm.d_model)), generator=g),
                               positions=Front(3))


def write(path, tensors, meta):
    save_file(tensors, str(path), metadata={"avec.steering": meta if isinstance(meta, str) else json.dumps(meta)})
    return path


# -- safetensors files -------------------------------------------------------------------------------------


def test_metadata_shape_that_disagrees_with_the_tensor(lm, tmp_path):
    v = good(lm)
    meta = v.metadata()
    meta["terms"][0]["shape"] = [lm.d_model, 3]  # same numel, transposed: must not be silently accepted
    p = write(tmp_path / "v.safetensors", {"term.0": v.terms[0].tensor}, meta)
    with pytest.raises(ValueError, match=rf"v.safetensors: term.0 \(at 'blocks.1.resid_pre'\) has shape \[3, {lm.d_model}\] "
                                         rf"but the metadata says \[{lm.d_model}, 3\]"):
        SteeringVector.load(p)


@pytest.mark.parametrize("dtype", [torch.bool, torch.int64, torch.uint8])
def test_bool_or_int_tensors_are_refused(lm, tmp_path, dtype):
    v = good(lm)
    meta = v.metadata()
    meta["terms"][0]["dtype"] = str(dtype).removeprefix("torch.")
    p = write(tmp_path / "v.safetensors", {"term.0": torch.ones(3, lm.d_model, dtype=dtype)}, meta)
    with pytest.raises(ValueError, match=rf"v.safetensors: term.0 .* has dtype {str(dtype)[6:]}; steering vectors hold "
                                         r"floating-point tensors"):
        SteeringVector.load(p)
    with pytest.raises(TypeError, match="floating-point"):  # and in memory too
        SteeringVector((Term("blocks.1.resid_pre", torch.ones(lm.d_model, dtype=dtype)),), lm.model_id)


def test_metadata_dtype_that_disagrees_with_the_tensor(lm, tmp_path):
    v = good(lm)
    meta = v.metadata()
    meta["terms"][0]["dtype"] = "float16"
    p = write(tmp_path / "v.safetensors", {"term.0": v.terms[0].tensor}, meta)
    with pytest.raises(ValueError, match=r"has dtype float32 but the metadata says 'float16'"):
        SteeringVector.load(p)


@pytest.mark.parametrize("text, expected", [
    ("{not json", r"not valid JSON \(Expecting property name"),
    ("[1, 2]", r"expected a JSON object, got list"),
    ('{"version": 1, "model_id": "m"}', r"'terms' is None, expected a non-empty list"),
    ('{"version": 1, "terms": [{"hook": "blocks.1.resid_pre"}]}', r"'model_id' is None, expected a string"),
    ('{"version": 1, "model_id": "m", "terms": [{"hook": "blocks.1.resid_pre"}]}',
     r"term 0 lacks positions, start, shape"),
    ('{"version": 1, "model_id": "m", "terms": [{"hook": "h", "positions": {"kind": "all"}, "start": "0", '
     '"shape": [64]}]}', r"term 0 has start '0', expected an integer"),
    ('{"version": "1", "model_id": "m", "terms": []}', r"version is '1', expected an integer"),
])
def test_broken_metadata_json_names_the_file(lm, tmp_path, text, expected):
    p = write(tmp_path / "broken.safetensors", {"term.0": torch.zeros(lm.d_model)}, text)
    with pytest.raises(ValueError, match=r"broken.safetensors has invalid 'avec.steering' metadata: " + ".*" + expected):
        SteeringVector.load(p)


def test_bad_positions_entry(lm, tmp_path):
    v = good(lm)
    meta = v.metadata()
    meta["terms"][0]["positions"] = {"kind": "front"}  # lacks k: today a raw KeyError
    p = write(tmp_path / "v.safetensors", {"term.0": v.terms[0].tensor}, meta)
    with pytest.raises(ValueError, match=r"v.safetensors: term.0 .* has invalid positions \{'kind': 'front'\}"):
        SteeringVector.load(p)


def test_missing_or_undescribed_tensors(lm, tmp_path):
    v = good(lm)
    meta = v.metadata()
    p = write(tmp_path / "v.safetensors", {"term.1": v.terms[0].tensor}, meta)
    with pytest.raises(ValueError, match=r"metadata describes 1 terms but the file lacks the tensor\(s\) term.0"):
        SteeringVector.load(p)
    p = write(tmp_path / "w.safetensors", {"term.0": v.terms[0].tensor, "term.1": v.terms[0].tensor.clone()}, meta)
    with pytest.raises(ValueError, match=r"w.safetensors holds tensor\(s\) term.1 that its metadata does not describe"):
        SteeringVector.load(p)


def test_truncated_or_foreign_file(lm, tmp_path):
    p = good(lm).save(tmp_path / "v.safetensors")
    data = p.read_bytes()
    p.write_bytes(data[:-20])
    with pytest.raises(ValueError, match=r"v.safetensors is not a readable safetensors file .*written by SteeringVector.save"):
        SteeringVector.load(p)
    q = tmp_path / "x.safetensors"
    q.write_text("hello")
    with pytest.raises(ValueError, match=r"x.safetensors is not a readable safetensors file"):
        SteeringVector.load(q)


def test_nan_in_file_names_the_file(lm, tmp_path):
    v = good(lm)
    t = v.terms[0].tensor.clone()
    t[1, 2] = float("nan")
    p = write(tmp_path / "nan.safetensors", {"term.0": t}, v.metadata())
    with pytest.raises(ValueError, match=r"nan.safetensors holds an invalid steering vector: .*NaN or inf"):
        SteeringVector.load(p)


def test_good_file_still_round_trips(lm, tmp_path):
    v = good(lm)
    w = SteeringVector.load(v.save(tmp_path / "v.safetensors"), lm)
    assert torch.equal(w.terms[0].tensor, v.terms[0].tensor) and w.terms[0].positions == Front(3)


# -- control-vector GGUF ---------------------------------------------------------------------------------


def write_cv(path, tensors: dict, arch="controlvector"):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_string("controlvector.model_hint", "llama")
    w.add_uint32("controlvector.layer_count", len(tensors))
    for name, arr in tensors.items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_direction_of_wrong_shape_is_not_reshaped(lm, tmp_path):
    d = lm.d_model
    p = write_cv(tmp_path / "cv.gguf", {"direction.1": np.ones((2, d // 2), np.float32)})  # d values, 2 rows
    with pytest.raises(ValueError, match=rf"direction.1 in .*cv.gguf has shape \[2, {d // 2}\] .*one vector of width "
                                         rf"d_model \({d}\)"):
        SteeringVector.from_gguf(p, lm)
    p = write_cv(tmp_path / "wide.gguf", {"direction.1": np.ones(d + 1, np.float32)})
    with pytest.raises(ValueError, match=rf"wide.gguf has width {d + 1} but the model has d_model {d}"):
        SteeringVector.from_gguf(p, lm)
    p = write_cv(tmp_path / "col.gguf", {"direction.1": np.ones((1, d), np.float32)})  # [1, d]: still one vector
    assert SteeringVector.from_gguf(p, lm)["blocks.1.resid_post"].shape == (d,)


def test_gguf_int_or_quantized_direction_is_refused(lm, tmp_path):
    p = write_cv(tmp_path / "int.gguf", {"direction.1": np.ones(lm.d_model, np.int32)})
    with pytest.raises(ValueError, match=r"direction.1 in .*int.gguf has GGML type I32; control-vector directions are "
                                         r"float tensors"):
        SteeringVector.from_gguf(p, lm)


def test_gguf_other_tensors_nan_truncated(lm, tmp_path):
    d = lm.d_model
    p = write_cv(tmp_path / "extra.gguf", {"direction.1": np.ones(d, np.float32), "scale": np.ones(1, np.float32)})
    with pytest.raises(ValueError, match=r"extra.gguf holds a tensor 'scale'; a control vector holds only direction.N"):
        SteeringVector.from_gguf(p, lm)
    bad = np.ones(d, np.float32)
    bad[3] = np.inf
    p = write_cv(tmp_path / "inf.gguf", {"direction.2": bad})
    with pytest.raises(ValueError, match=r"direction.2 in .*inf.gguf contains NaN or inf"):
        SteeringVector.from_gguf(p, lm)
    p = write_cv(tmp_path / "ok.gguf", {"direction.1": np.ones(d, np.float32), "direction.2": np.ones(d, np.float32)})
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(p.read_bytes()[:-d])  # today: a raw numpy reshape error
    with pytest.raises(ValueError, match=r"cut.gguf is truncated: it is \d+ bytes but its GGUF header describes 2 "
                                         r"tensors needing \d+ bytes"):
        SteeringVector.from_gguf(cut, lm)
    junk = tmp_path / "junk.gguf"
    junk.write_text("not a gguf")
    with pytest.raises(ValueError, match=r"junk.gguf is not a GGUF file"):
        SteeringVector.from_gguf(junk, lm)
