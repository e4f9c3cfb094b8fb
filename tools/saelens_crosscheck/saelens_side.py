# run with /work/venv-saelens/bin/python
import sys, json, torch
from sae_lens import SAE, StandardSAE, StandardSAEConfig, JumpReLUSAE, JumpReLUSAEConfig, TopKSAE, TopKSAEConfig
mode = sys.argv[1]
x = torch.load("/tmp/xcheck/x.pt")
if mode == "read":
    res = {}
    for arch in ["relu", "jumprelu", "topk", "batchtopk"]:
        s = SAE.load_from_disk(f"/tmp/xcheck/avec_{arch}")
        ref = torch.load(f"/tmp/xcheck/avec_{arch}.pt")
        with torch.no_grad():
            z = s.encode(x); xh = s.decode(z)
        res[arch] = dict(cls=type(s).__name__, hook=s.cfg.metadata.hook_name, z_err=(z - ref["z"]).abs().max().item(),
                         xhat_err=(xh - ref["xhat"]).abs().max().item())
    print(json.dumps(res, indent=1))
else:
    torch.manual_seed(1)
    cases = {
        "sl_standard": StandardSAE(StandardSAEConfig(d_in=32, d_sae=80)),
        "sl_standard_nobdec": StandardSAE(StandardSAEConfig(d_in=32, d_sae=80, apply_b_dec_to_input=False)),
        "sl_jumprelu": JumpReLUSAE(JumpReLUSAEConfig(d_in=32, d_sae=80)),
        "sl_topk": TopKSAE(TopKSAEConfig(d_in=32, d_sae=80, k=6)),
        "sl_topk_rescale": TopKSAE(TopKSAEConfig(d_in=32, d_sae=80, k=6, rescale_acts_by_decoder_norm=True)),
    }
    for name, s in cases.items():
        s.cfg.metadata.hook_name = "blocks.3.hook_resid_post"
        s.cfg.metadata.model_name = "tiny"
        with torch.no_grad():
            for pn, p in s.named_parameters():
                p.add_(0.1 * torch.randn_like(p))
                if pn == "W_dec": p.mul_(torch.rand(p.shape[0], 1) + 0.5)
            if hasattr(s, "threshold"): s.threshold.copy_(torch.rand_like(s.threshold) * 0.2)
            z = s.encode(x); xh = s.decode(z)
        s.save_model(f"/tmp/xcheck/{name}")
        torch.save({"z": z, "xhat": xh}, f"/tmp/xcheck/{name}.pt")
    print("written", list(cases))
