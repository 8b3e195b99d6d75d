"""Run under torchrun by tests/test_distributed.py: the sharded quality functions on the default
model, their results saved by rank 0 (torch.save) to the path given."""
import sys

import torch


def main(out: str) -> None:
    from litevar.models.core import distributed
    from litevar.models.default import load_default
    from litevar.profiler import quality as Q
    w = distributed.init("cpu")
    vae, var = load_default()
    calib = Q.calibrate(vae, var, n=6, cfg=4.0, seed=0, batch=2)  # 3 batches over the ranks
    loss_calib = Q.Calibration(calib.conds[:2], [t[:2] for t in calib.tokens], calib.ref_logits[:2], calib.cfg, 2)
    sens = Q.sensitivity(vae, var, loss_calib, formats=("W8A8",), qk8=True, kv_formats=("KV4",), progress=False)
    rec = Q.record_attention(vae, var, calib, progress=False)
    cov, sinks = Q.coverage_tables(rec, var)
    cfg = Q.cfg_share_losses(vae, var, loss_calib, progress=False)
    if w.main:
        torch.save({"world": w.size, "tokens": calib.tokens, "ref": calib.ref_logits, "sensitivity": sens,
                    "coverage": cov, "sinks": sinks, "cfg_share": cfg, "similarity": Q.cfg_similarity(rec)}, out)
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
