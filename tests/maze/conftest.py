import sys
from pathlib import Path

import pytest
import torch

# make `import avec` work when pytest is run without installing the package
_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    torch.set_num_threads(1)  # we share 2 cores with training runs
    yield


@pytest.fixture(scope="session")
def tiny_policy():
    from avec.maze.policy import ImpalaPolicy

    torch.manual_seed(0)
    return ImpalaPolicy(scale=1).eval()


@pytest.fixture
def kill_at_batch(monkeypatch):
    """``kill_at_batch(Sampler, n=4)``: the class's ``batch`` raises KeyboardInterrupt at its n-th call, as
    if the run were killed during step n. Returns the real method, to put back before resuming."""

    def kill(cls, n: int = 4):
        real = cls.batch
        calls = {"n": 0}

        def flaky(self, *a, **k):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt
            return real(self, *a, **k)

        monkeypatch.setattr(cls, "batch", flaky)
        return real

    return kill
