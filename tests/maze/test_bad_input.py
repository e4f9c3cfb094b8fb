"""Bad input to the maze package fails up front with a clear message: training options and paths,
corrupt checkpoints, unwritable --out of the maze commands."""

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from avec.app.cli import app
from avec.maze.policy import CHECKSUM_KEY, ImpalaPolicy, load_policy, read_checkpoint, save_policy, tensors_digest
from avec.maze.train import main as train_main
from avec.maze.train import train_policy

CKPT_DIR = Path(__file__).resolve().parents[2] / "avec" / "maze" / "checkpoints"


def _no_work(monkeypatch):
    """Any attempt to build a policy or load a checkpoint fails the test: the check must come first."""
    def boom(*a, **k):
        raise AssertionError("work started before the bad input was rejected")

    monkeypatch.setattr("avec.maze.train.ImpalaPolicy", boom)
    monkeypatch.setattr("avec.maze.policy.load_policy", boom)


# ------------------------------------------------------------------------------ avec maze train
@pytest.mark.parametrize("name", ["p.json", "p.curves.csv", "p", "p.pt"])
def test_train_out_must_be_safetensors(tmp_path, monkeypatch, name):
    _no_work(monkeypatch)
    with pytest.raises(ValueError, match=r"must end in \.safetensors.*<name>\.json.*<name>\.curves\.csv"):
        train_main(["--region", "5", "--out", str(tmp_path / name), "--max-steps", "1"])
    assert list(tmp_path.iterdir()) == []  # nothing written, in particular no report over a checkpoint


@pytest.mark.parametrize("args, needle", [
    (["--minutes", "-1"], "--minutes must be a finite number > 0, got -1.0"),
    (["--minutes", "0"], "--minutes must be a finite number > 0"),
    (["--minutes", "nan"], "--minutes must be a finite number > 0"),
    (["--minutes", "inf"], "--minutes must be a finite number > 0"),
    (["--max-steps", "0"], "--max-steps must be >= 1, got 0"),
    (["--max-steps", "-3"], "--max-steps must be >= 1"),
    (["--batch-size", "0"], "batch_size (--batch-size) must be an int >= 1, got 0"),
    (["--lr", "0"], "lr (--lr) must be a finite number > 0"),
    (["--lr", "nan"], "lr (--lr) must be a finite number > 0"),
    (["--threads", "0"], "threads (--threads) must be an int >= 1"),
    (["--dagger-every", "0"], "dagger_every (--dagger-every) must be an int >= 1"),
    (["--dagger-mazes", "1"], "dagger_mazes (--dagger-mazes) must be an int >= 2"),
    (["--dagger-steps", "0"], "dagger_steps (--dagger-steps) must be an int >= 1"),
    (["--per-maze", "0"], "per_maze (--per-maze) must be an int >= 1"),
    (["--size-ramp", "-1"], "size_ramp (--size-ramp) must be an int >= 0"),
    (["--size-power", "nan"], "size_power (--size-power) must be a finite number"),
    (["--scale", "0"], "scale (--scale) must be an int >= 1"),
    (["--seed", "-1"], "seed (--seed) must be an int >= 0"),
])
def test_train_rejects_senseless_numbers_before_work(tmp_path, monkeypatch, args, needle):
    _no_work(monkeypatch)
    with pytest.raises(ValueError) as info:
        train_main(["--region", "5", "--out", str(tmp_path / "p.safetensors"), *args])
    assert needle in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_train_policy_library_checks(tmp_path, monkeypatch):
    _no_work(monkeypatch)
    out = tmp_path / "p.safetensors"
    with pytest.raises(ValueError, match="minutes"):
        train_policy(5, out, minutes=-1.0, progress=False)
    with pytest.raises(ValueError, match="max_steps"):
        train_policy(5, out, max_steps=0, progress=False)  # an untrained "complete" checkpoint
    with pytest.raises(ValueError, match="checkpoint_every"):
        train_policy(5, out, max_steps=1, checkpoint_every=-1.0, progress=False)
    with pytest.raises(ValueError, match=r"must end in \.safetensors"):
        train_policy(5, tmp_path / "p.json", max_steps=1, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_train_out_paths_checked_before_work(tmp_path, monkeypatch):
    _no_work(monkeypatch)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        train_main(["--region", "5", "--out", str(tmp_path / "afile" / "p.safetensors"), "--max-steps", "1"])
    (tmp_path / "d.safetensors").mkdir()
    with pytest.raises(ValueError, match="is an existing folder"):
        train_main(["--region", "5", "--out", str(tmp_path / "d.safetensors"), "--max-steps", "1"])
    (tmp_path / "q.json").mkdir()  # the report would land on a folder
    with pytest.raises(ValueError, match="report path .*is an existing folder"):
        train_main(["--region", "5", "--out", str(tmp_path / "q.safetensors"), "--max-steps", "1"])


def test_maze_train_cli_one_line_error(tmp_path, capsys, monkeypatch):
    from avec.app.cli import main

    monkeypatch.delenv("AVEC_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info:
        main(["maze", "train", "--region", "5", "--out", str(tmp_path / "p.json"), "--max-steps", "1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: checkpoint path") and ".safetensors" in err
    assert "Traceback" not in err and not (tmp_path / "p.json").exists()


# ------------------------------------------------------------------------------ checkpoints
def _data_offset(path: Path) -> int:
    return 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


def _flip(path: Path, at: int, mask: int = 0x01) -> None:
    b = bytearray(path.read_bytes())
    b[at] ^= mask
    path.write_bytes(bytes(b))


def test_flipped_bit_in_checksummed_checkpoint_is_caught(tmp_path, tiny_policy):
    path = tmp_path / "p.safetensors"
    save_policy(tiny_policy, path, {"region": 5})
    with safe_open(str(path), "pt") as f:
        assert f.metadata()[CHECKSUM_KEY] == tensors_digest({k: f.get_tensor(k) for k in f.keys()})
    load_policy(path)  # intact: loads
    _flip(path, _data_offset(path) + 1001)  # a low mantissa bit: still a finite weight
    with safe_open(str(path), "pt") as f:
        assert all(torch.isfinite(f.get_tensor(k)).all() for k in f.keys())
    with pytest.raises(ValueError, match=r"p\.safetensors is corrupt: its tensors' sha256 differs"):
        load_policy(path)
    with pytest.raises(ValueError, match="sha256"):
        read_checkpoint(path)  # the training resume path reads through here too


def test_nan_weights_without_checksum_are_caught(tmp_path, tiny_policy):
    """Files written before the checksum existed: the non-finite check protects them."""
    path = tmp_path / "old.safetensors"
    state = {k: v.detach().clone().contiguous() for k, v in tiny_policy.state_dict().items()}
    save_file(state, str(path), metadata={"avec": json.dumps({"format": "avec-maze-policy/1"})})
    load_policy(path)
    state["embedder.block2.conv.weight"][0, 0, 0, 0] = float("nan")
    save_file(state, str(path), metadata={"avec": json.dumps({"format": "avec-maze-policy/1"})})
    with pytest.raises(ValueError, match=r"old\.safetensors is corrupt: non-finite .*embedder\.block2\.conv\.weight"):
        load_policy(path)


def test_damaged_header_and_pth_are_clear_errors(tmp_path, tiny_policy):
    path = tmp_path / "h.safetensors"
    save_policy(tiny_policy, path)
    _flip(path, 20, 0xFF)  # inside the JSON header
    with pytest.raises(ValueError, match=r"h\.safetensors"):
        load_policy(path)
    pth = tmp_path / "x.pth"
    pth.write_bytes(b"PK\x03\x04 not really a torch file")
    with pytest.raises(ValueError, match=r"x\.pth cannot be read as a torch \.pth file"):
        load_policy(pth)
    torch.save({"model_state_dict": {k: torch.full_like(v, float("inf")) for k, v in tiny_policy.state_dict().items()}},
               tmp_path / "inf.pth")
    with pytest.raises(ValueError, match=r"inf\.pth is corrupt: non-finite"):
        load_policy(tmp_path / "inf.pth")


@pytest.mark.parametrize("name", ["region5", "region15"])
def test_shipped_checkpoints_carry_a_valid_checksum(name):
    path = CKPT_DIR / f"{name}.safetensors"
    with safe_open(str(path), "pt") as f:
        stored = f.metadata().get(CHECKSUM_KEY)
        assert stored == tensors_digest({k: f.get_tensor(k) for k in f.keys()})
    assert load_policy(name).metadata["region"] == int(name.removeprefix("region"))


# ------------------------------------------------------------------------------ maze commands' outputs
@pytest.mark.parametrize("command", [["field"], ["sweep", "--n", "4", "--steps", "2"],
                                     ["retarget", "--n", "4", "--calibration", "4"], ["behaviour", "--n", "4"]])
def test_maze_out_checked_before_work(tmp_path, monkeypatch, command):
    _no_work(monkeypatch)
    runner = CliRunner()
    (tmp_path / "afile").write_text("x")
    for out, needle in ((tmp_path / "afile" / "f.png", "is a file, not a folder"),
                        (tmp_path, "is an existing folder"),
                        (tmp_path / "f.txt", "allowed: .png")):
        result = runner.invoke(app, ["maze", *command, "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert needle in " ".join(result.output.replace("│", " ").split()), result.output
    result = runner.invoke(app, ["maze", "stats", "--n", "4", "--plot-dir", str(tmp_path / "afile")])
    assert result.exit_code == 2 and "is an existing file" in " ".join(result.output.replace("│", " ").split())


def test_maze_field_creates_missing_folder(tmp_path):
    out = tmp_path / "new" / "deeper" / "f.png"
    result = CliRunner().invoke(app, ["maze", "field", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in out.parent.iterdir()] == ["f.png"]  # no temp file left behind
