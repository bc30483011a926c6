"""Statistics of a sample of activations that `SAE.init_from_data` starts from: the geometric
median (b_dec) and whitened data rows (decoder rows; docs/methods.md, "Initialisation")."""

import torch
from jaxtyping import Float
from torch import Tensor

DATA_ROW_FRACTION = 1 / 3
"""Share of the decoder rows the whitened init takes from data; the rest stay random. A third
beat both no rows and every row from data on MiniLM TopK over three seeds; on the built-in
corpus's activations every row from data left many latents dead and did no better than random
rows, while a third still gained. Chosen by measurement: BENCHMARKS.md, 'Training defaults: the
measurements behind them'."""


@torch.no_grad()
def whitened_rows(xc_ND: Float[Tensor, "N D"], n: int) -> Float[Tensor, "n D"]:
    """min(n, N) of the centred rows, drawn in a random order (torch's seeded RNG), times
    Σ^-1/2 (Σ = the rows' second moment, in float64; eigenvalues below 1e-6 of the largest are
    raised to it), at unit norm: data directions, spread as evenly as random ones
    (docs/methods.md, "Initialisation"). No rows (the random init stays) if the sample is not
    finite or has no variance: a run on such data stops at its non-finite check instead."""
    pick = torch.randperm(len(xc_ND), device=xc_ND.device)[:n]
    xc = xc_ND.double()
    cov = xc.T @ xc / len(xc)
    if not bool(torch.isfinite(cov).all()) or float(cov.diagonal().max()) <= 0:
        return xc_ND[:0]
    ev, V = torch.linalg.eigh(cov)
    w = (xc[pick] @ V @ torch.diag(ev.clamp_min(1e-6 * ev.max()).rsqrt()) @ V.T).to(xc_ND.dtype)
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-8)


@torch.no_grad()
def geometric_median(x_ND: Float[Tensor, "N D"], iters: int = 100, tol: float = 1e-6) -> Tensor:
    """Point minimising the summed Euclidean distance to the rows (Weiszfeld's algorithm,
    computed in float64)."""
    x = x_ND.double()
    m = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - m).norm(dim=1).clamp_min(1e-12)
        m_new = (w[:, None] * x).sum(0) / w.sum()
        done = (m_new - m).norm() <= tol * m.norm().clamp_min(1e-12)
        m = m_new
        if done:
            break
    return m.to(x_ND.dtype)
