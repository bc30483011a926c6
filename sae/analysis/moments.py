"""Second moments of activation rows (docs/methods.md#streaming-covariance): the streaming fp64
covariance, the randomized top-k spectrum, and the moments of sparse rows (SAE latents) without the
m × m matrix.

Pure functions on tensors; no file I/O. Everything is accumulated in float64 whatever the input
dtype (docs/methods.md#numerics). `sae.analysis.spectrum` builds the redundancy records on top of
these and re-exports `CovarianceAccumulator` and `randomized_eigenspectrum`.

    acc = CovarianceAccumulator()
    for x_BD in batches:
        acc.update(x_BD)
    cov_DD = acc.cov()
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from jaxtyping import Float

Array = np.ndarray | torch.Tensor
EPS_REL = 1e-12  # docs/methods.md#numerics: "numerically zero" is relative to λ_1


def _np64(x: Array) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _t64(x: Array, device: torch.device | None = None) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.ascontiguousarray(x))
    return t.to(device=device if device is not None else t.device, dtype=torch.float64)


_BLOCK = 1024
"""columns per block of the lower-triangular Gram update (one plain GEMM up to this width)."""


def _add_lower_gram_(
    m2_DD: torch.Tensor, yc_ND: torch.Tensor, delta_D: torch.Tensor, w: float
) -> None:
    """m2 += ycᵀyc + w·δδᵀ on the blocks at or below the block diagonal only, in place.

    A symmetric rank-n update needs half a GEMM's flops; torch has no SYRK, so the product is
    tiled into _BLOCK-wide blocks and only the i ≥ j ones are formed (faster than the full
    product: BENCHMARKS.md, 'Analysis suites at scale'). No d × d temporary is allocated.
    """
    d = m2_DD.shape[0]
    for i in range(0, d, _BLOCK):
        for j in range(0, i + 1, _BLOCK):
            blk = m2_DD[i : i + _BLOCK, j : j + _BLOCK]
            blk.addmm_(yc_ND[:, i : i + _BLOCK].T, yc_ND[:, j : j + _BLOCK])
            if w:
                blk.addr_(delta_D[i : i + _BLOCK], delta_D[j : j + _BLOCK], alpha=w)


class CovarianceAccumulator:
    """Streaming mean and covariance by the Chan/Welford merge, O(d²) memory.

    State is (n, μ, M2 = Σ (x−μ)(x−μ)ᵀ) in float64 on the device of the first batch, whatever the
    input dtype. Each batch is centred on its own mean before its outer product, and every row is
    first shifted by a fixed reference row K (the first row seen), so means and the merge's δ are
    O(spread), not O(‖μ‖): exact when ‖μ‖ ≫ spread, where E[xxᵀ] − μμᵀ loses every digit.
    """

    def __init__(self) -> None:
        self.n = 0
        self._shift_D: torch.Tensor | None = None  # K; the stored mean is μ − K
        self._mean_D: torch.Tensor | None = None
        self._m2_DD: torch.Tensor | None = None
        self._lower_only = False
        """only the lower block triangle of _m2_DD is current (see _add_lower_gram_)"""

    @property
    def d(self) -> int:
        return 0 if self._mean_D is None else self._mean_D.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        assert self._mean_D is not None and self._shift_D is not None, "empty accumulator"
        return self._shift_D + self._mean_D

    def update(self, x_ND: Float[Array, "*batch d"]) -> CovarianceAccumulator:
        """Add rows; leading dims are flattened ([B, S, d] token activations are fine)."""
        x_ND = _t64(x_ND, None if self._shift_D is None else self._shift_D.device)
        x_ND = x_ND.reshape(-1, x_ND.shape[-1])
        if x_ND.shape[0] == 0:
            return self
        if self._shift_D is None:
            self._shift_D = x_ND[0].clone()
            d = x_ND.shape[1]
            self._mean_D = torch.zeros_like(self._shift_D)
            self._m2_DD = torch.zeros(d, d, dtype=torch.float64, device=x_ND.device)
        assert self._mean_D is not None and self._m2_DD is not None
        y_ND = x_ND - self._shift_D
        mean_D = y_ND.mean(0)
        y_ND -= mean_D
        n_a, n_b = self.n, x_ND.shape[0]
        n = n_a + n_b
        delta_D = mean_D - self._mean_D
        _add_lower_gram_(self._m2_DD, y_ND, delta_D, n_a * n_b / n)
        self._lower_only = self._m2_DD.shape[0] > _BLOCK
        self._mean_D = self._mean_D + delta_D * (n_b / n)
        self.n = n
        return self

    def merge(self, other: CovarianceAccumulator) -> CovarianceAccumulator:
        """Fold `other` into self (in place; per-shard or per-rank accumulators). Returns self."""
        if other.n == 0:
            return self
        assert other._shift_D is not None and other._mean_D is not None and other._m2_DD is not None
        if self._shift_D is None:
            self._shift_D = other._shift_D.clone()
        dev = self._shift_D.device
        mean_D = other._mean_D.to(dev) + (other._shift_D.to(dev) - self._shift_D)
        self._merge_stats(other.n, mean_D, other.m2.to(dev))
        return self

    def _merge_stats(self, n_b: int, mean_D: torch.Tensor, m2_DD: torch.Tensor) -> None:
        # docs/methods.md#streaming-covariance: δ = μ_b − μ_a, μ = μ_a + δ n_b/n, M2 = M2_a + M2_b +
        # δδᵀ n_a n_b/n
        if self.n == 0:
            self.n, self._mean_D, self._m2_DD = n_b, mean_D.clone(), m2_DD.clone()
            return
        n_a, n = self.n, self.n + n_b
        delta_D = mean_D - self._mean_D
        self._fill_upper()
        # in place: at d = 16k one fp64 matrix is 2 GB (a self-merge, m2 is m2, still doubles)
        self._m2_DD.add_(m2_DD).addr_(delta_D, delta_D, alpha=n_a * n_b / n)
        self._mean_D = self._mean_D + delta_D * (n_b / n)
        self.n = n

    @classmethod
    def pooled(
        cls, accs: Sequence[CovarianceAccumulator], counts: Sequence[int] | None = None
    ) -> CovarianceAccumulator:
        """Pool groups, group g taken counts[g] times (bootstrap weights); equals repeated merge.

        Law of total variance about the pooled mean, M2 = Σ c_g (M2_g + n_g δ_g δ_gᵀ), in one pass.
        """
        counts = [1] * len(accs) if counts is None else list(counts)
        live = [(int(c), a) for c, a in zip(counts, accs, strict=True) if c > 0 and a.n > 0]
        out = cls()
        if not live:
            return out
        ref_D = live[0][1]._shift_D
        c_G = torch.tensor([c * a.n for c, a in live], dtype=torch.float64, device=ref_D.device)
        means_GD = torch.stack([a._mean_D + (a._shift_D - ref_D) for _, a in live])
        n = int(c_G.sum())
        mean_D = (c_G / n) @ means_GD
        delta_GD = means_GD - mean_D
        m2_DD = delta_GD.T @ (c_G[:, None] * delta_GD)
        for c, a in live:
            m2_DD.add_(a.m2, alpha=c)
        out.n, out._shift_D, out._mean_D, out._m2_DD = n, ref_D.clone(), mean_D, m2_DD
        return out

    def _fill_upper(self) -> None:
        """Mirror the lower block triangle of M2 onto the stale upper one, in place."""
        if self._lower_only:
            assert self._m2_DD is not None
            m2, d = self._m2_DD, self._m2_DD.shape[0]
            for i in range(0, d, _BLOCK):
                for j in range(i + _BLOCK, d, _BLOCK):
                    m2[i : i + _BLOCK, j : j + _BLOCK] = m2[j : j + _BLOCK, i : i + _BLOCK].T
            self._lower_only = False

    @property
    def m2(self) -> torch.Tensor:
        """M2 = Σ (x−μ)(x−μ)ᵀ, whole."""
        assert self._m2_DD is not None, "empty accumulator"
        self._fill_upper()
        return self._m2_DD

    def cov(self, ddof: int = 1) -> torch.Tensor:
        """Σ = M2/(n − ddof); ddof=1 the sample covariance, ddof=0 the population moment."""
        assert self._m2_DD is not None and self.n > ddof, "need more rows than ddof"
        return self.m2 / (self.n - ddof)

    def gram(self) -> torch.Tensor:
        """Uncentred G = XᵀX/n, rebuilt from (n, μ, M2)."""
        assert self._m2_DD is not None, "empty accumulator"
        mean_D = self.mean
        return self.m2 / self.n + torch.outer(mean_D, mean_D)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors for safetensors (per-shard accumulators saved for a later bootstrap)."""
        assert self._m2_DD is not None, "empty accumulator"
        return {"n": torch.tensor(self.n), "shift": self._shift_D, "mean_shifted": self._mean_D,
                "m2": self.m2}  # fmt: skip

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> CovarianceAccumulator:
        out = cls()
        out._shift_D = _t64(state["shift"]).clone()
        out._merge_stats(int(state["n"]), _t64(state["mean_shifted"]), _t64(state["m2"]))
        return out


# --- symmetric eigenvalues (docs/methods.md#numerics) ------------------------------------


def _zero_tail(ev: np.ndarray) -> np.ndarray:
    ev = np.clip(ev, 0.0, None)
    if ev.size and ev[0] > 0:
        ev[ev <= EPS_REL * ev[0]] = 0.0
    return ev


def _eigh_desc(
    cov_DD: Array, top_k: int | None = None, vectors: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    # torch's CPU LAPACK in fp64 (CPU eigh is often faster than GPU). Staying inside one
    # thread pool matters: alternating torch (OpenMP) and numpy/scipy (OpenBLAS) kernels on a
    # busy machine slowed a bootstrap many times over (BENCHMARKS.md, 'Analysis suites at scale').
    cov_DD = _t64(cov_DD, torch.device("cpu"))
    cov_DD = (cov_DD + cov_DD.T) / 2  # docs/methods.md#numerics: symmetrise before eigh
    if vectors:
        ev, vecs_DD = torch.linalg.eigh(cov_DD)
        vecs = vecs_DD.flip(1)[:, :top_k].numpy()
    else:
        ev, vecs = torch.linalg.eigvalsh(cov_DD), None
    return _zero_tail(ev.flip(0)[:top_k].numpy().copy()), vecs


def _col_sums(c: torch.Tensor) -> torch.Tensor:
    """Column sums of a dense, sparse COO or sparse CSR matrix, dense."""
    if c.layout == torch.sparse_csr:
        return torch.zeros(c.shape[1], dtype=c.dtype).index_add_(0, c.col_indices(), c.values())
    return torch.sparse.sum(c, 0).to_dense() if c.layout == torch.sparse_coo else c.sum(0)


def randomized_eigenspectrum(
    rows: Array | Callable[[], Iterable[Array]],
    k: int,
    oversample: int = 15,
    n_power_iter: int = 3,
    seed: int = 0,
    chunk: int = 8192,
) -> np.ndarray:
    """Top-k covariance eigenvalues by randomized subspace iteration (Halko, Martinsson & Tropp
    2011).

    rows: an [n, m] matrix (numpy, dense or sparse torch) or a zero-argument callable returning a
    fresh iterable of row chunks (it is read 3 + n_power_iter times). Never forms the m × m matrix:
    memory O(m·(k + oversample)). Sparse chunks are centred implicitly (BᵀBQ − s(μᵀQ) − μ(sᵀQ) +
    n_b μ(μᵀQ), s = column sums) so they stay sparse; dense chunks are centred explicitly.
    """

    def chunks() -> Iterable[torch.Tensor]:
        if callable(rows):
            yield from (c if isinstance(c, torch.Tensor) else _t64(c) for c in rows())
        elif isinstance(rows, torch.Tensor) and rows.layout != torch.strided:
            yield rows
        else:
            for i in range(0, rows.shape[0], chunk):
                yield _t64(rows[i : i + chunk])

    n, sum_M = 0, None
    for c in chunks():
        s = _col_sums(c.double())
        n, sum_M = n + c.shape[0], s if sum_M is None else sum_M + s
    assert sum_M is not None and n > 1, "need at least two rows"
    mean_M = sum_M / n

    def sigma_times(q_ML: torch.Tensor) -> torch.Tensor:
        out_ML = torch.zeros_like(q_ML)
        for c in chunks():
            c = c.double()
            if c.layout != torch.strided:  # implicit centring: (B − 1μᵀ)ᵀ(B − 1μᵀ)Q expanded
                s_M = _col_sums(c)
                mq_L = mean_M @ q_ML
                out_ML += (
                    c.t() @ (c @ q_ML) - torch.outer(s_M, mq_L) - torch.outer(mean_M, s_M @ q_ML)
                )
                out_ML += c.shape[0] * torch.outer(mean_M, mq_L)
            else:
                cc = c - mean_M
                out_ML += cc.T @ (cc @ q_ML)
        return out_ML / (n - 1)

    m, ell = mean_M.shape[0], min(k + oversample, mean_M.shape[0])
    gen = torch.Generator().manual_seed(seed)
    y_ML = sigma_times(torch.randn(m, ell, generator=gen, dtype=torch.float64))
    # QR returns Q column-major, and a sparse @ column-major dense product is far slower
    # (BENCHMARKS.md, 'Analysis suites at scale')
    for _ in range(n_power_iter):
        y_ML = sigma_times(torch.linalg.qr(y_ML).Q.contiguous())
    q_ML = torch.linalg.qr(y_ML).Q.contiguous()
    t_LL = q_ML.T @ sigma_times(q_ML)  # Rayleigh-Ritz on the captured subspace
    return _eigh_desc(t_LL)[0][:k]


# --- sparse rows: SAE latents with m too large for an m × m matrix (docs/methods.md#codes-compared)


class SparseMoments(NamedTuple):
    n: int
    """rows"""
    mean_M: np.ndarray
    """μ, fp64"""
    var_M: np.ndarray
    """diag Σ (ddof = 1)"""
    trace: float
    """tr Σ"""
    fro2: float
    """‖Σ‖_F², Σ = (AᵀA − n μμᵀ)/(n − 1)"""


def sparse_moments(a_NM, block: int = 256) -> SparseMoments:
    """Mean, variances, tr Σ and ‖Σ‖_F² of sparse rows (scipy.sparse [n, m]) without Σ itself.

    ‖Σ‖_F² is exact (PR and rho_offdiag need no eigendecomposition): column blocks J of
    `block` latents give G_J = A_JᵀA, sparse; on its pattern (G − nμμᵀ)_jk is summed exactly, and
    off the pattern the entries are −n μ_j μ_k, whose squares sum in closed form. Memory O(nnz(G_J)
    + m); time O(n·L0²) for L0 active latents per row.
    """
    import scipy.sparse as sp

    a = sp.csc_matrix(a_NM, dtype=np.float64)
    n, m = a.shape
    assert n > 1, "need at least two rows"
    mean_M = np.asarray(a.sum(0)).ravel() / n
    # Σ_t (a_tk − μ_k)² = Σ_nonzero (a − μ_k)² + (n − nnz_k) μ_k²: no E[a²] − μ² cancellation
    nnz_M = np.diff(a.indptr)
    col_M = np.repeat(np.arange(m), nnz_M)
    ss_M = np.bincount(col_M, weights=(a.data - mean_M[col_M]) ** 2, minlength=m)
    var_M = (ss_M + (n - nnz_M) * mean_M**2) / (n - 1)
    a_csr = a.tocsr()
    mu2_total = float(mean_M @ mean_M)
    fro2 = 0.0
    for j0 in range(0, m, block):
        g = (a[:, j0 : j0 + block].T @ a_csr).tocoo()  # [b, m] sparse block of AᵀA
        j, k = g.row + j0, g.col
        outer = n * mean_M[j] * mean_M[k]
        mu_j = mean_M[j0 : j0 + block]
        off_pattern = n**2 * (float(mu_j @ mu_j) * mu2_total - float((outer / n) @ (outer / n)))
        fro2 += float(((g.data - outer) ** 2).sum()) + max(off_pattern, 0.0)
    return SparseMoments(n, mean_M, var_M, float(var_M.sum()), fro2 / (n - 1) ** 2)


def csr_row_chunks(a_NM, rows: int = 16384) -> Callable[[], Iterable[torch.Tensor]]:
    """A re-iterable of sparse torch row chunks of a scipy matrix, for randomized_eigenspectrum:
    its products A·Q are formed per chunk, so memory is O(rows·(k + oversample)), not O(n·k)."""
    import scipy.sparse as sp

    a = sp.csr_matrix(a_NM, dtype=np.float64)

    def chunks() -> Iterable[torch.Tensor]:
        # CSR, not COO: B·Q and Bᵀ·(BQ) (the transpose is CSC) run faster in CSR
        # (BENCHMARKS.md, 'Analysis suites at scale')
        for s in range(0, a.shape[0], rows):
            c = a[s : s + rows]
            c.sort_indices()
            with warnings.catch_warnings():  # "CSR support is in beta": not the user's concern
                warnings.filterwarnings("ignore", "Sparse CSR tensor support", UserWarning)
                t = torch.sparse_csr_tensor(
                    torch.from_numpy(c.indptr.astype(np.int64)),
                    torch.from_numpy(c.indices.astype(np.int64)),
                    torch.from_numpy(c.data),
                    c.shape,
                    check_invariants=False,
                )
            yield t

    return chunks
