"""The Impala CNN maze policy, with procgen-tools' module names, and its checkpoints.

Module tree (hook points are these paths; every residual addition is its own module):

    embedder.block{1,2,3}.conv      Conv2d k3 p1 (3 -> 16s, 16s -> 32s, 32s -> 32s)
    embedder.block{1,2,3}.maxpool   MaxPool2d k3 s2 p1 (64 -> 32 -> 16 -> 8)
    embedder.block{i}.res{1,2}.{relu1, conv1, relu2, conv2, resadd}   resadd(conv2_out, block input)
    embedder.relu3, embedder.flatten, embedder.fc (-> 256), embedder.relufc
    fc_policy (256 -> 15 logits), fc_value (256 -> 1)

Input: float ``[B, 3, 64, 64]`` = rgb / 255. Output: ``PolicyOutput(logits [B, 15], value [B])``.
Width scale s = 4 is the original agents' size (block2.res1.resadd: 128 x 16 x 16).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from ..io import atomic_write, atomic_write_json  # noqa: F401  (atomic_write_json: re-exported)

FORMAT = "avec-maze-policy/1"
CHECKSUM_KEY = "avec.tensors_sha256"  # safetensors header key of ``tensors_digest`` (files since this key)


class PolicyOutput(NamedTuple):
    logits: torch.Tensor  # [B, 15]
    value: torch.Tensor  # [B]


class ResAdd(nn.Module):
    """``a + b`` as a module so the residual sum is a hook point."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, start_dim=1)


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.resadd = ResAdd()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the skip carries the pre-ReLU input, as in procgen-tools
        return self.resadd(self.conv2(self.relu2(self.conv1(self.relu1(x)))), x)


class ImpalaBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.res1 = ResBlock(cout)
        self.res2 = ResBlock(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res2(self.res1(self.maxpool(self.conv(x))))


class ImpalaEmbedder(nn.Module):
    def __init__(self, scale: int = 1):
        super().__init__()
        c1, c2 = 16 * scale, 32 * scale
        self.block1 = ImpalaBlock(3, c1)
        self.block2 = ImpalaBlock(c1, c2)
        self.block3 = ImpalaBlock(c2, c2)
        self.relu3 = nn.ReLU()
        self.flatten = Flatten()
        self.fc = nn.Linear(c2 * 8 * 8, 256)
        self.relufc = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(x)))
        return self.relufc(self.fc(self.flatten(self.relu3(x))))


class ImpalaPolicy(nn.Module):
    """Impala CNN actor-critic. ``forward(obs [B, 3, 64, 64]) -> PolicyOutput``."""

    def __init__(self, scale: int = 1, n_actions: int = 15):
        super().__init__()
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise ValueError(f"width scale must be a positive int, got {scale!r}")
        self.scale = scale
        self.embedder = ImpalaEmbedder(scale)
        self.fc_policy = nn.Linear(256, n_actions)
        self.fc_value = nn.Linear(256, 1)
        for m in self.modules():  # init as procgen-tools / train-procgen
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.orthogonal_(self.fc_policy.weight, gain=0.01)
        nn.init.orthogonal_(self.fc_value.weight, gain=1.0)

    def forward(self, obs: torch.Tensor) -> PolicyOutput:
        if obs.ndim != 4 or obs.shape[1:] != (3, 64, 64):
            raise ValueError(f"expected observations [B, 3, 64, 64] (rgb/255), got {tuple(obs.shape)}")
        h = self.embedder(obs)
        return PolicyOutput(self.fc_policy(h), self.fc_value(h).reshape(-1))


# ------------------------------------------------------------------------------ checkpoints
def _scale_from_state(state: dict) -> int:
    key = "embedder.block1.conv.weight"
    if key not in state:
        raise ValueError(f"not an Impala maze policy state dict: missing {key!r}")
    out = state[key].shape[0]
    if out % 16:
        raise ValueError(f"{key} has {out} output channels; expected a multiple of 16 (16 x width scale)")
    return out // 16


def _load_state(policy: ImpalaPolicy, state: dict, source: str) -> None:
    own = policy.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        raise ValueError(
            f"checkpoint {source} does not fit ImpalaPolicy(scale={policy.scale}, n_actions="
            f"{policy.fc_policy.out_features}): missing={missing[:5]} unexpected={unexpected[:5]} "
            f"wrong shapes={wrong[:5]}"
        )
    policy.load_state_dict(state)


def from_state_dict(state: dict, source: str = "<state dict>") -> ImpalaPolicy:
    """Build a policy whose width scale and action count are inferred from ``state``."""
    scale = _scale_from_state(state)
    n_actions = state["fc_policy.weight"].shape[0] if "fc_policy.weight" in state else 15
    policy = ImpalaPolicy(scale, n_actions)
    _load_state(policy, state, source)
    return policy.eval()


def load_procgen_tools(path: str | os.PathLike) -> ImpalaPolicy:
    """Load a procgen-tools / Langosco et al. ``.pth`` checkpoint (``{'model_state_dict': ...}``)
    safely (``weights_only=True``); the width scale is read off the first conv."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling / zip errors of a damaged or foreign file
        raise ValueError(f"checkpoint {path} cannot be read as a torch .pth file (corrupt?): "
                         f"{type(e).__name__}: {' '.join(str(e).split())}") from None
    state = ckpt.get("model_state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict with 'model_state_dict', got {type(ckpt).__name__}")
    _check_finite({k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, path)
    return from_state_dict(state, str(path))


def tensors_digest(tensors: dict) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order: what ``save_policy`` stores
    under ``CHECKSUM_KEY`` and ``read_checkpoint`` checks (flipped bits anywhere in the data change it)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _check_finite(tensors: dict, source) -> None:
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"checkpoint {source} is corrupt: non-finite (NaN/inf) values in {len(bad)} tensor(s), "
                         f"e.g. {bad[:3]}; re-download or retrain it")


def save_policy(policy: ImpalaPolicy, path: str | os.PathLike, metadata: dict | None = None,
                extra_tensors: dict | None = None) -> None:
    """Save as safetensors; ``metadata`` (JSON-able) goes into the file header under 'avec'.
    ``extra_tensors`` (e.g. optimizer state) are stored under an ``extra.`` prefix."""
    meta = {"format": FORMAT, "width_scale": policy.scale, "n_actions": policy.fc_policy.out_features}
    meta.update(metadata or {})
    tensors = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
    for k, v in (extra_tensors or {}).items():
        tensors["extra." + k] = v.detach().cpu().contiguous()
    header = {"avec": json.dumps(meta), CHECKSUM_KEY: tensors_digest(tensors)}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=header))


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict, dict]:
    """(policy state, extra tensors, metadata) of one of our safetensors checkpoints.

    Corruption is a ``ValueError`` naming the file: an unreadable header, tensors whose sha256 differs
    from the one stored at save time (``CHECKSUM_KEY``), and, for every file (older ones have no
    checksum), non-finite weights."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint path {path} is a folder; give a .safetensors file")
    tensors = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
    except Exception as e:  # safetensors raises its own SafetensorError (and OSError) on a bad file
        raise ValueError(f"checkpoint {path} is not a readable safetensors file (corrupt or truncated?): {e}") from None
    try:
        meta = json.loads(header.get("avec", "{}"))
    except json.JSONDecodeError as e:
        raise ValueError(f"checkpoint {path} is corrupt: its 'avec' metadata is not JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{path} is not an avec maze policy checkpoint (format={fmt!r})")
    stored = header.get(CHECKSUM_KEY)
    if stored is not None and tensors_digest(tensors) != stored:
        raise ValueError(f"checkpoint {path} is corrupt: its tensors' sha256 differs from the one stored when it "
                         "was saved; re-download or retrain it")
    _check_finite(tensors, path)
    state, extra = {}, {}
    for k, v in tensors.items():
        (extra if k.startswith("extra.") else state)[k.removeprefix("extra.")] = v
    return state, extra, meta


def load_policy(path: str | os.PathLike) -> ImpalaPolicy:
    """Load one of our safetensors checkpoints, a shipped name (``"region5"``), or a
    procgen-tools ``.pth``. Returns the policy in eval mode; ``policy.metadata`` holds the header."""
    p = Path(path)
    if not p.exists() and not p.suffix:
        shipped = Path(__file__).parent / "checkpoints" / f"{p.name}.safetensors"
        if shipped.exists():
            p = shipped
        else:
            names = sorted(q.stem for q in (Path(__file__).parent / "checkpoints").glob("*.safetensors"))
            raise FileNotFoundError(f"no checkpoint file {path!r} and no shipped policy of that name; shipped: {names}")
    if p.suffix in (".pth", ".pt"):
        return load_procgen_tools(p)
    state, _, meta = read_checkpoint(p)
    policy = from_state_dict(state, str(p))
    policy.metadata = meta
    return policy
