import json

import pytest
import torch
from safetensors import safe_open

from avec.maze.policy import ImpalaPolicy, load_policy, load_procgen_tools, read_checkpoint, save_policy
from avec.maze.render import obs_tensor
from avec.maze.world import Maze

NAMES = [
    "embedder.block1.conv", "embedder.block1.maxpool", "embedder.block2.res1.relu1",
    "embedder.block2.res1.conv1", "embedder.block2.res1.relu2", "embedder.block2.res1.conv2",
    "embedder.block2.res1.resadd", "embedder.block3.res2.resadd", "embedder.relu3",
    "embedder.flatten", "embedder.fc", "embedder.relufc", "fc_policy", "fc_value",
]


def test_module_names_and_shapes(tiny_policy):
    mods = dict(tiny_policy.named_modules())
    for n in NAMES:
        assert n in mods, n
    convs = [n for n, m in mods.items() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 15
    seen = {}
    hooks = [mods[n].register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o)) for n in NAMES]
    x = obs_tensor([Maze.from_seed(0), Maze.from_seed(1)])
    out = tiny_policy(x)
    for h in hooks:
        h.remove()
    assert out.logits.shape == (2, 15) and out.value.shape == (2,)
    assert seen["embedder.block2.res1.resadd"].shape == (2, 32, 16, 16)
    assert seen["embedder.block1.maxpool"].shape == (2, 16, 32, 32)
    assert seen["embedder.block3.res2.resadd"].shape == (2, 32, 8, 8)
    assert seen["embedder.relufc"].shape == (2, 256)


def test_scale_four_matches_original_agent():
    p = ImpalaPolicy(scale=4)
    n = sum(v.numel() for v in p.parameters())
    assert abs(n - 3.65e6) < 0.05e6
    assert p.embedder.block2.res1.conv2.out_channels == 128


def test_resadd_adds_pre_relu_input(tiny_policy):
    blk = tiny_policy.embedder.block2.res1
    x = torch.randn(2, 32, 16, 16)
    expect = blk.conv2(torch.relu(blk.conv1(torch.relu(x)))) + x
    assert torch.allclose(blk(x), expect, atol=1e-6)


def test_bad_input_shape(tiny_policy):
    with pytest.raises(ValueError, match=r"\[B, 3, 64, 64\]"):
        tiny_policy(torch.zeros(1, 64, 64, 3))


def test_safetensors_round_trip_exact(tmp_path, tiny_policy):
    path = tmp_path / "p.safetensors"
    save_policy(tiny_policy, path, {"region": 5})
    q = load_policy(path)
    for (k, v), (k2, v2) in zip(tiny_policy.state_dict().items(), q.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    x = obs_tensor(Maze.from_seed(3))
    assert torch.equal(tiny_policy(x).logits, q(x).logits)
    assert q.metadata["region"] == 5 and q.metadata["width_scale"] == 1
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()["avec"])["format"].startswith("avec-maze-policy")
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temp files


def test_procgen_tools_checkpoint(tmp_path):
    torch.manual_seed(1)
    orig = ImpalaPolicy(scale=2)
    path = tmp_path / "model.pth"
    torch.save({"model_state_dict": orig.state_dict(), "optimizer_state_dict": {}}, path)
    q = load_procgen_tools(path)
    assert q.scale == 2
    x = obs_tensor(Maze.from_seed(0))
    assert torch.equal(orig(x).logits, q(x).logits)


def test_wrong_shape_checkpoint_is_a_clear_error(tmp_path):
    state = ImpalaPolicy(scale=1).state_dict()
    state["embedder.fc.weight"] = torch.zeros(256, 999)
    path = tmp_path / "bad.pth"
    torch.save({"model_state_dict": state}, path)
    with pytest.raises(ValueError, match="wrong shapes=.*embedder.fc.weight"):
        load_procgen_tools(path)
    state = ImpalaPolicy(scale=1).state_dict()
    state["embedder.block1.conv.weight"] = torch.zeros(20, 3, 3, 3)
    torch.save({"model_state_dict": state}, path)
    with pytest.raises(ValueError, match="multiple of 16"):
        load_procgen_tools(path)
    torch.save({"model_state_dict": {"foo": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="missing 'embedder.block1.conv.weight'"):
        load_procgen_tools(path)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="shipped"):
        load_policy("no-such-policy")
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an avec maze policy"):
        read_checkpoint(tmp_path / "other.safetensors")
