"""bf16 vs fp32 model forward (issue 11, item 6): activation error at resid_post.3 over held-out
windows of the built-in corpus, and a trained SAE's FVU on each set of rows.

    python scripts/bf16_forward_check.py checkpoints/default/final/resid_post.3-topk-3072-k32
"""

import itertools
import sys
import time

import torch

import sae
from sae.activations.sources import LiveSource
from sae.config.schema import DataConfig, ModelConfig, StoreConfig

torch.set_num_threads(2)
data = DataConfig(part="eval", max_windows=200)  # held-out windows
rows = {}
for dt in ("float32", "bfloat16"):
    src = LiveSource(ModelConfig(dtype=dt, batch_windows=8), data, StoreConfig())
    t = time.time()
    pieces = list(itertools.islice(src.pieces(), 3))  # 24 windows
    rows[dt] = torch.cat([p.rows["resid_post.3"] for p in pieces]).float()
    print(dt, rows[dt].shape, f"{time.time() - t:.1f}s")
a, b = rows["float32"], rows["bfloat16"]
err = (b - a).pow(2).sum() / (a - a.mean(0)).pow(2).sum()
cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
print(
    "relative squared error (of the variance)",
    float(err),
    "row cosine min/median",
    float(cos.min()),
    float(cos.median()),
)
d = sae.load(sys.argv[1])


def fvu(x):
    with torch.no_grad():
        xh = d(x).x_hat
    return float((x - xh).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


print("SAE FVU fp32 rows", fvu(a), "bf16 rows", fvu(b))
with torch.no_grad():
    za, zb = d.encode(a), d.encode(b)
same = ((za != 0) & (zb != 0)).sum(-1).float() / (za != 0).sum(-1).float()
print("fraction of active latents shared", float(same.mean()))
