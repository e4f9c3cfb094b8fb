# run with /work/main/.venv/bin/python from /work/wt-features
import sys, torch, json
from avec.dictionaries.sae import SAE
from avec.dictionaries.saelens_io import save_saelens, load_saelens
mode = sys.argv[1]
torch.manual_seed(0)
x = torch.randn(64, 32) * 2
torch.save(x, "/tmp/xcheck/x.pt")
if mode == "write":
    for arch in ["relu", "jumprelu", "topk", "batchtopk"]:
        s = SAE(arch=arch, d_in=32, d_sae=80, k=6 if "topk" in arch else None, hook="blocks.3.resid_post")
        with torch.no_grad():
            for p in s.parameters():
                p.add_(0.1 * torch.randn_like(p))
            if arch == "jumprelu": s.threshold.abs_()
            if arch == "batchtopk": s.threshold.fill_(0.05)
            s.input_scale.fill_(1.3)
        save_saelens(s, f"/tmp/xcheck/avec_{arch}", model_name="tiny")
        torch.save({"z": s.encode(x).detach(), "xhat": s(x).detach()}, f"/tmp/xcheck/avec_{arch}.pt")
else:
    res = {}
    for name in sys.argv[2:]:
        s = load_saelens(f"/tmp/xcheck/{name}")
        ref = torch.load(f"/tmp/xcheck/{name}.pt")
        with torch.no_grad():
            z, xh = s.encode(x), s.decode(s.encode(x))
        res[name] = dict(arch=s.cfg.arch, hook=s.cfg.hook, z_err=(z - ref["z"]).abs().max().item(),
                         xhat_err=(xh - ref["xhat"]).abs().max().item(), l0=(z > 0).float().sum(-1).mean().item())
    print(json.dumps(res, indent=1))
