"""Streaming per-latent statistics for feature records, updated batch by batch in bounded memory.

Memory is O(d_sae · (top_k + reservoir) · context + d_sae · (hist_bins + d_in) + d_sae²) — the
last term (latent co-moments) only up to `MAX_CORR_LATENTS`; never [tokens, d_sae].

- Top-activating contexts: per latent the `top_k` largest activations seen so far, merged with
  each batch's own top-k (a k-way merge: exact, docs/methods.md#feature-records).
- Quantile samples: per latent a uniform sample without replacement of its firing tokens, kept
  as the `reservoir` events with the smallest random keys (bottom-k sampling; Cohen & Kaplan
  2007, "Summarizing data using bottom-k sketches"); keys are seeded by (seed, batch index), so
  a resumed pass draws the same sample.
- Histogram of activations on fixed log-spaced edges (`HIST_EDGES`), firing counts, sums.
- Pearson/cosine co-moments: Σ a_i a_j over latents (sparse products) and Σ a_i x_d with the
  input coordinates ("neurons"), so correlations come out exactly at the end.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

HIST_EDGES = torch.logspace(-4, 4, 321, dtype=torch.float64)
"""activation histogram edges: 10^-4 ... 10^4, 40 bins per decade (ratio 1.059); values below
the first edge go to bin 0, above the last to the last bin."""
MAX_CORR_LATENTS = 16_384
"""latent-latent correlations need a d_sae² float64 matrix (2 GiB at this size); beyond it they
are skipped and the records say so."""


class Accumulator:
    """Per-latent streaming state; `update` once per batch, `state_dict` for resuming."""

    def __init__(
        self,
        d_sae: int,
        d_in: int,
        top_k: int = 20,
        reservoir: int = 64,
        before: int = 10,
        after: int = 5,
        seed: int = 0,
    ):
        M, W = d_sae, before + 1 + after
        self.top_k, self.reservoir, self.before, self.after, self.seed = (
            top_k,
            reservoir,
            before,
            after,
            seed,
        )
        f64 = torch.float64
        self.s: dict[str, Tensor] = {
            "n_tokens": torch.zeros((), dtype=torch.int64),
            "fired_M": torch.zeros(M, dtype=torch.int64),
            "sum_M": torch.zeros(M, dtype=f64),
            "sum_sq_M": torch.zeros(M, dtype=f64),
            "max_M": torch.zeros(M),
            "hist_MH": torch.zeros(M, len(HIST_EDGES) - 1, dtype=torch.int64),
            "x_sum_D": torch.zeros(d_in, dtype=f64),
            "x_sum_sq_D": torch.zeros(d_in, dtype=f64),
            "ax_MD": torch.zeros(M, d_in, dtype=f64),
        }
        if M <= MAX_CORR_LATENTS:
            self.s["aa_MM"] = torch.zeros(M, M, dtype=f64)
        for name, k in (("top", top_k), ("res", reservoir)):
            fill = -torch.inf if name == "top" else torch.inf
            self.s[f"{name}_key_MK"] = torch.full((M, k), fill)  # value (top) or random key (res)
            self.s[f"{name}_val_MK"] = torch.zeros(M, k)
            self.s[f"{name}_id_MK"] = torch.full((M, k), -1, dtype=torch.int64)
            self.s[f"{name}_acts_MKW"] = torch.zeros(M, k, W)
            self.s[f"{name}_tok_MKW"] = torch.full((M, k, W), -1, dtype=torch.int32)

    def state_dict(self) -> dict[str, Tensor]:
        return self.s

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        missing = sorted(set(self.s) - set(state))
        if missing:
            raise ValueError(f"records state lacks {missing}")
        self.s = {k: state[k] for k in self.s}

    def update(
        self,
        a_BTM: Tensor,
        x_BTD: Tensor,
        tokens_BT: Tensor | None,
        keep_BT: Tensor,
        window_B: Tensor,
        batch_index: int,
    ) -> None:
        """Add one batch: latents `a` (zero at positions not kept), inputs `x`, token ids (None:
        rows without text), the kept mask and each window's global index."""
        B, T, M = a_BTM.shape
        s = self.s
        keep_N = keep_BT.reshape(-1).to(a_BTM.device)
        a_NM = a_BTM.reshape(B * T, M).float() * keep_N[:, None]
        a_NM = a_NM.cpu()
        keep_N = keep_N.cpu()
        x_KD = x_BTD.reshape(B * T, -1)[keep_N.to(x_BTD.device)].double().cpu()
        s["n_tokens"] += int(keep_N.sum())
        fired_NM = a_NM != 0
        s["fired_M"] += fired_NM.sum(0)
        s["sum_M"] += a_NM.sum(0, dtype=torch.float64)
        s["sum_sq_M"] += a_NM.double().pow(2).sum(0)
        s["max_M"] = torch.maximum(s["max_M"], a_NM.max(0).values)
        n_idx, m_idx = fired_NM.nonzero(as_tuple=True)
        v = a_NM[n_idx, m_idx].double()
        H = s["hist_MH"].shape[1]
        b = (torch.bucketize(v, HIST_EDGES, right=True) - 1).clamp(0, H - 1)
        s["hist_MH"].view(-1).index_add_(0, m_idx * H + b, torch.ones_like(b))
        s["x_sum_D"] += x_KD.sum(0)
        s["x_sum_sq_D"] += x_KD.pow(2).sum(0)
        a_KM = a_NM[keep_N].double()
        nz = a_KM.to_sparse()
        s["ax_MD"] += torch.sparse.mm(nz.t(), x_KD)
        if "aa_MM" in s:
            with warnings.catch_warnings():  # "sparse CSR support is in beta": used internally
                warnings.simplefilter("ignore", UserWarning)
                prod = torch.sparse.mm(nz.t().coalesce(), nz).coalesce()
            i, j = prod.indices()
            s["aa_MM"].view(-1).index_add_(0, i * M + j, prod.values())
        tok_N = (
            tokens_BT.reshape(-1).to(torch.int32).cpu()
            if tokens_BT is not None
            else torch.full((B * T,), -1, dtype=torch.int32)
        )
        pos_id_N = (window_B.cpu()[:, None] * T + torch.arange(T)[None, :]).reshape(-1)
        aT_MN = a_NM.T.contiguous()
        k = min(self.top_k, B * T)
        val_Mk, n_Mk = aT_MN.topk(k, dim=1)
        key_Mk = torch.where(val_Mk > 0, val_Mk, -torch.inf)
        self._merge("top", key_Mk, n_Mk, aT_MN, tok_N, pos_id_N, T, largest=True)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + batch_index)
        rand_MN = torch.rand(M, B * T, generator=g)
        rand_MN = torch.where(aT_MN != 0, rand_MN, torch.inf)
        r = min(self.reservoir, B * T)
        key_Mr, n_Mr = rand_MN.topk(r, dim=1, largest=False)
        self._merge("res", key_Mr, n_Mr, aT_MN, tok_N, pos_id_N, T, largest=False)

    def _merge(
        self,
        name: str,
        key_Mk: Tensor,
        n_Mk: Tensor,
        aT_MN: Tensor,
        tok_N: Tensor,
        pos_id_N: Tensor,
        T: int,
        largest: bool,
    ) -> None:
        """Merge a batch's candidates (flat row `n_Mk`, ranking key) into the kept set."""
        s = self.s
        M, k = n_Mk.shape
        off_W = torch.arange(-self.before, self.after + 1)
        p_Mk = n_Mk % T
        q_MkW = p_Mk[..., None] + off_W
        valid_MkW = (q_MkW >= 0) & (q_MkW < T)
        flat_MkW = (n_Mk - p_Mk)[..., None] + q_MkW.clamp(0, T - 1)
        acts_MkW = aT_MN.gather(1, flat_MkW.reshape(M, -1)).reshape(M, k, -1) * valid_MkW
        tok_MkW = torch.where(valid_MkW, tok_N[flat_MkW], -1)
        val_Mk = aT_MN.gather(1, n_Mk)
        id_Mk = torch.where(torch.isfinite(key_Mk), pos_id_N[n_Mk], -1)
        keys = torch.cat([s[f"{name}_key_MK"], key_Mk], 1)
        K = s[f"{name}_key_MK"].shape[1]
        kept_MK = keys.topk(K, dim=1, largest=largest).indices
        for field, new in (
            ("key_MK", key_Mk),
            ("val_MK", val_Mk),
            ("id_MK", id_Mk),
            ("acts_MKW", acts_MkW),
            ("tok_MKW", tok_MkW),
        ):
            both = torch.cat([s[f"{name}_{field}"], new.to(s[f"{name}_{field}"].dtype)], 1)
            idx = kept_MK if both.dim() == 2 else kept_MK[..., None].expand(-1, -1, both.shape[2])
            s[f"{name}_{field}"] = both.gather(1, idx)
