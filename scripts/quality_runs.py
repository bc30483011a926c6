"""One short training run for the few-step quality grids (issue 11), printed as one JSON line.

    python scripts/quality_runs.py syn "ADAM_BETAS=(0.9,0.95)" --eval-tokens 16384
    python scripts/quality_runs.py mini --batch 1024 --lr 3e-3 --tokens 500000

`syn`: the synthetic set d 256, 2048 true unit directions, each firing with p = 8/2048, U(0,1)
magnitudes; TopK k 8, d_sae 2048, batch 4096 by default; prints MMCS and the fraction of true
features recovered at cos > 0.9. `mini`: `--activations /work/bench/train.npy` (made by
scripts/make_bench_acts.py), held-out FVU on `eval.npy`; TopK d_sae 3072, k 32 by default.
NAME=VALUE patches override a training constant of sae/config.py for this run (ADAM_BETAS,
LR_WARMUP, LR_DECAY, GRAD_CLIP, B_DEC_INIT; ADAM_EPS sets Adam's eps), an SAEConfig field (aux_coefficient, aux_k),
`init_scale=c` (W_enc = c W_dec^T after the data init) or `freeze_benc=1`.
"""

import argparse
import ast
import contextlib
import io
import json
import resource
import shutil
import time

import torch

import sae.sae as S
import sae.training.members as M
import sae.training.train as T
from sae.analysis.matching import compare_dictionaries
from sae.analysis.synthetic import SyntheticConfig, SyntheticData
from sae.config import SAEConfig, StoreConfig, TrainConfig

p = argparse.ArgumentParser()
p.add_argument("kind", choices=["syn", "mini"])
p.add_argument("--tokens", type=int, default=500_000)
p.add_argument("--batch", type=int, default=4096)
p.add_argument("--d-sae", type=int, default=None)
p.add_argument("--k", type=int, default=None)
p.add_argument("--lr", type=float, default=None)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--dead", type=int, default=250_000)
p.add_argument("--eval-tokens", type=int, default=65536)
p.add_argument("--out", default="/tmp/s4q/run")
p.add_argument("--tag", default="")
p.add_argument("--bench", default="/work/bench")
p.add_argument("--log", default=None, help="append the JSON line to this file")
p.add_argument("patch", nargs="*")
a = p.parse_intermixed_args()

sae_kw = {}
for item in a.patch:
    name, val = item.split("=", 1)
    try:
        v = ast.literal_eval(val)
    except Exception:
        v = val
    if name in ("aux_coefficient", "aux_k"):
        sae_kw[name] = v
    elif name == "init_scale":  # W_enc = c * W_dec^T, no data rescale
        orig = S.SAE.init_from_data

        def init(self, x, y=None, method="geometric_median", _c=v, _o=orig):
            _o(self, x, y, method)
            with torch.no_grad():
                self.W_enc.copy_(self.W_dec.T * _c)

        S.SAE.init_from_data = init
    elif name == "freeze_benc":
        ob = T.build_members

        def bm(*args, _o=ob):
            ms = _o(*args)
            for m in ms:
                m.sae.b_enc.requires_grad_(False)
            return ms

        T.build_members = bm
    else:
        for mod in (M, T):
            if hasattr(mod, name):
                setattr(mod, name, v)
        if name == "ADAM_EPS":
            orig_adam = torch.optim.Adam

            class A(orig_adam):
                def __init__(self, *args, _eps=v, **kw):
                    kw["eps"] = _eps
                    super().__init__(*args, **kw)

            torch.optim.Adam = A

common = dict(
    total_tokens=a.tokens,
    eval_tokens=a.eval_tokens,
    lr=a.lr,
    seed=a.seed,
    dead_tokens=a.dead,
    out=a.out,
    quiet=True,
    checkpoint_every=0,
)
if a.kind == "syn":
    syn = SyntheticConfig(d_in=256, n_features=2048, mean_active=8.0, prob_decay=1.0, seed=0)
    tc = TrainConfig(
        activations="synthetic",
        synthetic=syn,
        store=StoreConfig(batch_size=a.batch, buffer_tokens=65536, normalize=True),
        sae=SAEConfig(d_in=None, architecture="topk", d_sae=a.d_sae or 2048, k=a.k or 8, **sae_kw),
        **common,
    )
else:
    tc = TrainConfig(
        activations=f"{a.bench}/train.npy",
        eval_activations=f"{a.bench}/eval.npy",
        store=StoreConfig(batch_size=a.batch, normalize=True),
        sae=SAEConfig(d_in=None, architecture="topk", d_sae=a.d_sae or 3072, k=a.k or 32, **sae_kw),
        **common,
    )
shutil.rmtree(a.out, ignore_errors=True)
T.CHECKPOINT_SECONDS = 10**9
t0 = time.time()
tr = T.Trainer(tc)
with contextlib.redirect_stdout(io.StringIO()):
    finals = tr.fit()
res = {
    "tag": a.tag,
    "kind": a.kind,
    "tokens": a.tokens,
    "batch": a.batch,
    "lr": tr.members[0].lr,
    "patch": a.patch,
    "seed": a.seed,
}
summ = json.load(open(finals[0] / "train_summary.json"))
res["fvu"] = round(summ["fvu"], 4)
res["dead_pct"] = summ.get("dead_pct")
if a.kind == "syn":
    true = SyntheticData(syn).dictionary_ND
    m = compare_dictionaries(true, tr.members[0].sae.W_dec.detach().float())
    res["mmcs"] = round(float(m.mmcs), 4)
    res["rec90"] = round(float(m.recovery_90), 4)
res["wall"] = round(time.time() - t0, 1)
res["rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
print(json.dumps(res), flush=True)
if a.log:
    with open(a.log, "a") as f:
        f.write(json.dumps(res) + "\n")
