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
        keep_N = keep_BT.reshape(-1).cpu()
        a_NM = a_BTM.reshape(B * T, M).float().cpu() * keep_N[:, None]
        x_KD = x_BTD.reshape(B * T, -1).cpu()[keep_N].double()
        s["n_tokens"] += int(keep_N.sum())
        n_E, m_E = (a_NM != 0).nonzero(as_tuple=True)  # row-major: sorted by token, then latent
        v_E = a_NM[n_E, m_E]
        s["fired_M"] += torch.bincount(m_E, minlength=M)
        s["sum_M"] += torch.zeros(M, dtype=torch.float64).index_add_(0, m_E, v_E.double())
        s["sum_sq_M"] += torch.zeros(M, dtype=torch.float64).index_add_(0, m_E, v_E.double() ** 2)
        s["max_M"] = torch.maximum(s["max_M"], a_NM.max(0).values)
        H = s["hist_MH"].shape[1]
        b = (torch.bucketize(v_E.double(), HIST_EDGES, right=True) - 1).clamp(0, H - 1)
        s["hist_MH"].view(-1).index_add_(0, m_E * H + b, torch.ones_like(b))
        s["x_sum_D"] += x_KD.sum(0)
        s["x_sum_sq_D"] += x_KD.pow(2).sum(0)
        # Sparse co-moments over the kept rows: rows of a_NM outside keep are all zero.
        row_of = torch.cumsum(keep_N, 0) - 1
        nz = torch.sparse_coo_tensor(
            torch.stack([row_of[n_E], m_E]), v_E.double(), (len(x_KD), M), check_invariants=False
        ).coalesce()
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
        batch = (a_NM, tok_N, pos_id_N, T)
        # Top: only events above the latent's current k-th value can enter.
        ok = v_E > s["top_key_MK"][m_E, -1]
        self._merge("top", m_E[ok], n_E[ok], v_E[ok], batch, largest=True)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + batch_index)
        key_E = torch.rand(len(v_E), generator=g)
        ok = key_E < s["res_key_MK"][m_E, -1]
        self._merge("res", m_E[ok], n_E[ok], key_E[ok], batch, largest=False)

    def _merge(
        self, name: str, m_E: Tensor, n_E: Tensor, key_E: Tensor, batch, largest: bool
    ) -> None:
        """Merge candidate events (latent m, flat row n, ranking key) into the kept sets of the
        latents they belong to; every other latent's kept set is untouched."""
        if len(m_E) == 0:
            return
        a_NM, tok_N, pos_id_N, T = batch
        s = self.s
        K = s[f"{name}_key_MK"].shape[1]
        order = torch.sort(key_E, descending=largest, stable=True).indices
        order = order[torch.sort(m_E[order], stable=True).indices]  # by latent, then rank
        m_E, n_E, key_E = m_E[order], n_E[order], key_E[order]
        rows, counts = torch.unique_consecutive(m_E, return_counts=True)
        start = torch.cumsum(counts, 0) - counts
        slot_E = torch.arange(len(m_E)) - torch.repeat_interleave(start, counts)
        keep = slot_E < K
        m_E, n_E, key_E, slot_E = m_E[keep], n_E[keep], key_E[keep], slot_E[keep]
        row_E = torch.repeat_interleave(torch.arange(len(rows)), counts)[keep]
        A, W = len(rows), self.before + 1 + self.after
        off_W = torch.arange(-self.before, self.after + 1)
        p_E = n_E % T
        q_EW = p_E[:, None] + off_W
        valid_EW = (q_EW >= 0) & (q_EW < T)
        flat_EW = (n_E - p_E)[:, None] + q_EW.clamp(0, T - 1)
        M = a_NM.shape[1]
        acts_EW = a_NM.view(-1)[flat_EW * M + m_E[:, None]] * valid_EW
        tok_EW = torch.where(valid_EW, tok_N[flat_EW], -1)
        fill = -torch.inf if largest else torch.inf
        new = {
            "key_MK": (torch.full((A, K), fill), key_E),
            "val_MK": (torch.zeros(A, K), a_NM[n_E, m_E]),
            "id_MK": (torch.full((A, K), -1, dtype=torch.int64), pos_id_N[n_E]),
            "acts_MKW": (torch.zeros(A, K, W), acts_EW),
            "tok_MKW": (torch.full((A, K, W), -1, dtype=torch.int32), tok_EW),
        }
        cand = {}
        for field, (blank, values) in new.items():
            blank[row_E, slot_E] = values.to(blank.dtype)
            cand[field] = blank
        keys = torch.cat([s[f"{name}_key_MK"][rows], cand["key_MK"]], 1)
        kept_AK = keys.topk(K, dim=1, largest=largest).indices
        for field, c in cand.items():
            both = torch.cat([s[f"{name}_{field}"][rows], c], 1)
            idx = kept_AK if both.dim() == 2 else kept_AK[..., None].expand(-1, -1, W)
            s[f"{name}_{field}"][rows] = both.gather(1, idx)
