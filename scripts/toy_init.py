"""Random against whitened-data decoder rows on planted dictionaries (BENCHMARKS.md, 'Training
defaults: the measurements behind them'): where the whitened init, the default, loses.

    python scripts/toy_init.py          # about 9 minutes on 2 cores

Each case plants `nf` unit directions in `d` dimensions. Each token mixes about `L0` of them
with magnitudes U(0.5, 1.5), plus an offset of 0.1, as in
`tests/test_sae.py::test_loss_falls_on_planted_dictionary`. A TopK SAE (`dsae` latents, k)
starts from `SAE.init_from_data` on 1,024 tokens with random decoder rows, a third of them
whitened centred sample rows (the default), or every row from them (`INITS`; W_enc = W_dec^T and
the least-squares scale). Adam at 1e-2
trains it on fresh batches of 256 tokens. The script prints the last batch's FVU and how many
planted directions have a decoder row at cos > 0.9, for seeds 0 and 1.
"""

import torch

from sae.model.sae import SAE, SAEConfig
from sae.model.step import training_forward


def planted(n: int, g: torch.Generator, F: torch.Tensor, L0: float) -> torch.Tensor:
    on = torch.rand(n, F.shape[0], generator=g) < L0 / F.shape[0]
    return (on * (0.5 + torch.rand(n, F.shape[0], generator=g))) @ F + 0.1


INITS = {"random": ("random", 0.0), "a third": ("whitened", 1 / 3), "every row": ("whitened", 1.0)}
"""Decoder rows: random; a third whitened from data (the default); every row from data."""


def run(init: str, seed: int, d=32, nf=64, dsae=64, k=4, L0=2, steps=300) -> tuple[float, int]:
    g = torch.Generator().manual_seed(seed)
    F = torch.randn(nf, d, generator=g)
    F /= F.norm(dim=1, keepdim=True)
    torch.manual_seed(seed)
    sae = SAE(SAEConfig(architecture="topk", d_in=d, d_sae=dsae, k=k))
    x0 = planted(1024, g, F, L0)
    rows, fraction = INITS[init]
    sae.init_from_data(x0, rows=rows, data_fraction=fraction)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(steps):
        out = training_forward(sae, planted(256, g, F, L0))
        opt.zero_grad()
        out.loss.backward()
        sae.remove_parallel_decoder_grad()
        opt.step()
        sae.set_decoder_unit_norm()
    W = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    return round(out.mse.item(), 3), int(((F @ W.T).max(1).values > 0.9).sum())


CASES = {
    "test's toy: d 32, 64 planted, d_sae 64, k 4, L0 2": {},
    "k 2": {"k": 2},
    "d_sae 256": {"dsae": 256},
    "d 128, 256 planted, d_sae 256": {"d": 128, "nf": 256, "dsae": 256},
    "L0 4": {"L0": 4},
    "1,200 steps": {"steps": 1200},
    "L0 8, k 8": {"L0": 8, "k": 8},
    "L0 8, k 8, 1,200 steps": {"L0": 8, "k": 8, "steps": 1200},
    "d 64, 128 planted, d_sae 128, L0 8, k 8": {"d": 64, "nf": 128, "dsae": 128, "L0": 8, "k": 8},
}

if __name__ == "__main__":
    for name, kw in CASES.items():
        res = {init: [run(init, s, **kw) for s in (0, 1)] for init in INITS}
        print(f"{name}: " + ", ".join(f"{i} {r}" for i, r in res.items()), flush=True)
