"""The core's cache overhead counted in CPU instructions (valgrind's callgrind), not seconds.

    python benchmarks/core_overhead_instructions.py [--model smollm2] [--batch 8] [--tokens 64] [--n 3]

Timings on a shared 2-core machine wander by several percent; instruction counts do not (the same total
for the same binary and inputs, whatever else runs). Three child processes run under callgrind, one torch
thread each: (a) load the model and do one warm-up forward, (b) the same then ``n`` plain HF forwards,
(c) the same then ``n`` avec runs caching every residual point (embed + resid_pre/mid/post of every
layer). The ratio ``(c - a) / (b - a)`` is the instructions of a cached run per instruction of a plain
forward. It leaves out what instructions do not show (memory bandwidth of the copies), which is why
``core_overhead.py`` times the same thing; the two together say whether a time ratio is noise.
Needs ``valgrind`` (Debian package).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

CHILD = r"""
import sys, torch
torch.set_num_threads(1)
import avec
variant, n, batch, tokens, model = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
lm = avec.load(model)
g = torch.Generator().manual_seed(0)
ids = torch.randint(100, lm.dims.vocab, (batch, tokens), generator=g)
mask = torch.ones_like(ids)
residual = ["embed", "blocks.*.resid_pre", "blocks.*.resid_mid", "blocks.*.resid_post"]
def plain():
    with torch.no_grad():
        lm.hf(input_ids=ids, attention_mask=mask, use_cache=False)
plain(); lm.run({"input_ids": ids, "attention_mask": mask}, cache=residual)  # warm both paths
for _ in range(n if variant != "base" else 0):
    if variant == "plain":
        plain()
    else:
        lm.run({"input_ids": ids, "attention_mask": mask}, cache=residual)
"""


def count(variant: str, args) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
        res = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-c", CHILD,
                              variant, str(args.n), str(args.batch), str(args.tokens), args.model],
                             capture_output=True, text=True, env=env)
        if res.returncode != 0:
            raise RuntimeError(f"callgrind run '{variant}' failed:\n{res.stderr[-2000:]}")
        m = re.search(r"Collected\s*:\s*(\d+)", res.stderr)
        if not m:
            raise RuntimeError(f"no instruction total in callgrind's output:\n{res.stderr[-2000:]}")
        return int(m.group(1))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--n", type=int, default=3, help="forwards counted per variant")
    args = p.parse_args(argv)
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    base, plain, cached = (count(v, args) for v in ("base", "plain", "cached"))
    per_plain, per_cached = (plain - base) / args.n, (cached - base) / args.n
    out = {"instructions per plain forward": per_plain, "instructions per cached run": per_cached,
           "ratio": per_cached / per_plain}
    print(f"{args.model}, {args.batch} x {args.tokens} tokens, 1 thread, {args.n} forwards per variant")
    print(f"  plain HF forward:               {per_plain / 1e9:.3f} G instructions")
    print(f"  run, cache all residual points: {per_cached / 1e9:.3f} G instructions  ({out['ratio']:.3f}x)")
    return out


if __name__ == "__main__":
    main()
