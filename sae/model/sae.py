"""The sparse autoencoder: one config, one module, the architecture picked by a `Literal`.

    from sae.model.sae import SAE, SAEConfig
    sae = SAE(SAEConfig(architecture="topk", d_in=384, d_sae=3072, k=32))
    sae.init_from_data(x_sample_ND)
    out = training_forward(sae, x_BD, dead_mask_S=dead_S)  # sae.model.step: loss, mse (FVU), ...
    latents_BS = sae.encode(x_BD); x_hat_BD = sae.decode(latents_BS)

Architectures (the training losses live in sae/model/step.py, which imports this module):

- relu: ReLU encoder with an L1 penalty weighted by decoder row norms (Anthropic, "Circuits
  Updates - April 2024", the decoder-norm-weighted penalty; no unit-norm constraint needed).
- topk: keep the k largest pre-activations per token, plus the AuxK loss on dead latents
  (Gao et al. 2024, "Scaling and evaluating sparse autoencoders", §2.3 and §A.2).
- batchtopk: keep the k*B largest activations over the whole batch; a threshold learned during
  training makes inference a JumpReLU that needs no batch (Bussmann et al. 2024, "BatchTopK
  Sparse Autoencoders").
- jumprelu: per-latent threshold trained with a straight-through estimator whose rectangle
  kernel has width `jumprelu_bandwidth`, and an L0 penalty through the same estimator
  (Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity with JumpReLU
  Sparse Autoencoders", §3-4).
- matryoshka: BatchTopK whose loss sums the reconstruction losses of nested latent prefixes
  (Bussmann et al. 2025, "Learning Multi-Level Features with Matryoshka SAEs"; Nabeshima 2024).
- gated: inference only, to read SAELens gated SAEs (Rajamanoharan et al. 2024, "Improving
  Dictionary Learning with Gated Sparse Autoencoders"); training it raises an error.

Setting `d_out` makes a transcoder (Dunefsky et al. 2024): it reads one activation and
reconstructs another, optionally with a linear skip (Paulo et al. 2025, "Transcoders beat SAEs").
Parameter names and shapes follow SAELens, so export is a copy, not a rename.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from tyro.conf import Suppress

from sae.model.init import DATA_ROW_FRACTION, geometric_median, whitened_rows

Architecture = Literal["relu", "topk", "batchtopk", "jumprelu", "matryoshka", "gated"]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
TOPK_FAMILY = ("topk", "batchtopk", "matryoshka")


@dataclass(kw_only=True)
class SAEConfig:
    """Shape and training objective of one SAE. Every field's unit is in its docstring."""

    architecture: Architecture = "topk"
    """Activation and loss: relu, topk, batchtopk, jumprelu, matryoshka, or gated (load only)."""
    d_in: Suppress[int | None] = None
    """Width of the input activations (numbers per token); None: the trainer takes it from the
    activations (an SAE cannot be built until it is set)."""
    d_sae: int = 3072
    """Number of latents (dictionary size)."""
    d_out: Suppress[int | None] = None
    """Transcoder: width of the target activations; None makes an autoencoder (target = input)."""
    skip_connection: bool = False
    """Transcoder only: add a linear skip x @ W_skip.T (W_skip [d_out, d_in], starts at zero)."""
    apply_b_dec_to_input: Suppress[bool] = True
    """Autoencoder: subtract b_dec from x before encoding (Gao et al. 2024 b_pre); a transcoder
    never does, its b_dec lives in the output space."""
    k: int = 32
    """topk/batchtopk/matryoshka: active latents per token (batch variants: on batch average)."""
    l1_coefficient: float = 0.2
    """relu: weight of the L1 penalty, dimensionless (the penalty is divided by the RMS norm of
    the centred target; Anthropic's lambda=5 at E|x|^2=d_in is about 5/sqrt(d_in) here)."""
    l0_coefficient: float = 1e-3
    """jumprelu: weight of the L0 penalty, per active latent per token (FVU units)."""
    jumprelu_bandwidth: Suppress[float] = 1e-3
    """jumprelu: width of the STE rectangle kernel, in pre-activation units (paper: 0.001 with
    inputs scaled to unit mean squared norm)."""
    jumprelu_init_threshold: Suppress[float] = 1e-3
    """jumprelu: starting threshold of every latent, in pre-activation units."""
    target_l0: Suppress[float | None] = None
    """jumprelu: if set, the L0 term becomes (L0/target_l0 - 1)^2, in active latents per token."""
    matryoshka_prefixes: list[int] = field(default_factory=list)
    """matryoshka: nested prefix widths in latents, strictly ascending, the last equal to d_sae;
    empty: d_sae/16, /8, /4, /2, d_sae (see `matryoshka_ladder`)."""
    aux_k: Suppress[int | None] = None
    """TopK family: dead latents used by the AuxK loss per token; None means d_in // 2 (Gao et
    al. 2024 §A.2 pick a power of two near d_model/2)."""
    aux_coefficient: Suppress[float] = 1 / 8
    """TopK family: weight of the AuxK loss. Gao et al. 2024 §A.2 use 1/32 over long runs; at a
    few hundred steps 1/8 revives dead latents sooner: higher synthetic recovery, and MiniLM FVU
    unchanged with fewer dead (BENCHMARKS.md, 'Training defaults: the measurements behind them')."""

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise ValueError(msg)

        if self.architecture not in ARCHITECTURES:
            bad(f"architecture={self.architecture!r} is not one of {', '.join(ARCHITECTURES)}.")
        for name in ("d_in", "d_sae"):
            v = getattr(self, name)
            if name == "d_in" and v is None:
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(f"{name}={v!r} must be a positive integer.")
        if self.d_out is not None and (not isinstance(self.d_out, int) or self.d_out < 1):
            bad(f"d_out={self.d_out!r} must be a positive integer or None (autoencoder).")
        if self.skip_connection and self.d_out is None:
            bad("skip_connection=True needs d_out set: only a transcoder has a linear skip.")
        if self.architecture == "gated" and self.d_out is not None:
            bad(f"d_out={self.d_out} is not supported with architecture='gated'.")
        if not isinstance(self.k, int) or isinstance(self.k, bool):
            bad(f"k={self.k!r} must be a whole number of latents.")
        if self.architecture in TOPK_FAMILY and not 1 <= self.k < self.d_sae:
            bad(f"k={self.k} must be at least 1 and smaller than d_sae={self.d_sae}.")
        for name in ("l1_coefficient", "l0_coefficient", "aux_coefficient"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                bad(f"{name}={v!r} must be a finite number >= 0.")
        if not self.jumprelu_bandwidth > 0:
            bad(f"jumprelu_bandwidth={self.jumprelu_bandwidth} must be > 0.")
        if not self.jumprelu_init_threshold >= 0:
            bad(f"jumprelu_init_threshold={self.jumprelu_init_threshold} must be >= 0.")
        if self.target_l0 is not None and not 0 < self.target_l0 <= self.d_sae:
            bad(f"target_l0={self.target_l0} must be in (0, d_sae={self.d_sae}] or None.")
        if self.aux_k is not None and not (
            isinstance(self.aux_k, int) and 1 <= self.aux_k <= self.d_sae
        ):
            bad(f"aux_k={self.aux_k} must be in [1, d_sae={self.d_sae}] or None (d_in // 2).")
        p = list(self.matryoshka_prefixes)
        if self.architecture == "matryoshka" and p:
            if p[-1] != self.d_sae:
                bad(f"matryoshka_prefixes={p} must end at d_sae={self.d_sae} (or be empty).")
            if p[0] < 1 or any(a >= b for a, b in zip(p[:-1], p[1:], strict=True)):
                bad(f"matryoshka_prefixes={p} must be positive and strictly ascending.")

    @property
    def width_out(self) -> int:
        """Width of the reconstruction: d_out for a transcoder, d_in for an autoencoder."""
        return self.d_in if self.d_out is None else self.d_out

    @property
    def prefixes(self) -> list[int]:
        """matryoshka: the nested prefix widths in use (the default ladder when none are given)."""
        return list(self.matryoshka_prefixes) or matryoshka_ladder(self.d_sae)

    @property
    def k_aux(self) -> int:
        return self.aux_k if self.aux_k is not None else max(1, self.d_in // 2)


def matryoshka_ladder(d_sae: int) -> list[int]:
    """Default matryoshka prefixes: d_sae/16, d_sae/8, d_sae/4, d_sae/2, d_sae, rounded, each twice
    the one before, so coarse and fine features both get a prefix (the doubling is our choice;
    Bussmann et al. 2025 nest prefixes of several sizes). Duplicates collapse for tiny d_sae."""
    return sorted({max(1, round(d_sae / 2**i)) for i in range(5)})


class SAEOutput(NamedTuple):
    x_hat: Tensor
    """Reconstruction [..., width_out]."""
    latents: Tensor
    """Latent activations [..., d_sae]."""


class SparseCodes(NamedTuple):
    """Latents of a TopK-family encoder in sparse form: row b's active latents are
    top_indices[b] with values top_acts[b] (a zero value means not active)."""

    top_acts: Tensor
    """Values [..., k] (after the ReLU)."""
    top_indices: Tensor
    """Latent indices [..., k] (int64)."""

    def to_dense(self, d_sae: int) -> Tensor:
        """The same latents as a dense [..., d_sae] tensor."""
        out = self.top_acts.new_zeros(*self.top_acts.shape[:-1], d_sae)
        return out.scatter_(-1, self.top_indices, self.top_acts)


class SparseOutput(NamedTuple):
    x_hat: Tensor
    """Reconstruction [..., width_out]."""
    codes: SparseCodes
    """The latents in sparse form (see `SparseCodes`)."""


class SAE(nn.Module):
    """Sparse autoencoder (or transcoder) with SAELens parameter names.

    W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, width_out], b_dec [width_out];
    threshold [d_sae] for jumprelu (parameter) and batchtopk/matryoshka (buffer, a running
    estimate); W_skip [d_out, d_in] for skip transcoders (SAELens's orientation);
    b_gate, b_mag, r_mag [d_sae] instead of b_enc for gated.
    """

    def __init__(
        self,
        cfg: SAEConfig,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if cfg.d_in is None:
            raise ValueError("cfg.d_in=None: set d_in to the activation width before building.")
        self.cfg = cfg
        # Free-form facts (model_name, hook_name, ...): `sae.io` writes and reads them.
        self.metadata: dict = {}
        kw = {"device": device, "dtype": dtype}
        S, D, D_out = cfg.d_sae, cfg.d_in, cfg.width_out
        self.W_enc = nn.Parameter(torch.empty(D, S, **kw))
        self.W_dec = nn.Parameter(torch.empty(S, D_out, **kw))
        self.b_dec = nn.Parameter(torch.zeros(D_out, **kw))
        if cfg.architecture == "gated":
            self.b_gate = nn.Parameter(torch.zeros(S, **kw))
            self.b_mag = nn.Parameter(torch.zeros(S, **kw))
            self.r_mag = nn.Parameter(torch.zeros(S, **kw))
        else:
            self.b_enc = nn.Parameter(torch.zeros(S, **kw))
        if cfg.architecture == "jumprelu":
            # A plain threshold, not log-threshold: Adam then moves it by ~lr in absolute terms,
            # so a short run can still grow it from the 0.001 start, and saving it is exact.
            self.threshold = nn.Parameter(torch.full((S,), cfg.jumprelu_init_threshold, **kw))
        elif cfg.architecture in ("batchtopk", "matryoshka"):
            # Zero means "not estimated yet": the learned threshold is a running mean of the
            # smallest kept activation, so it is always > 0 (Bussmann et al. 2024 §3).
            self.register_buffer("threshold", torch.zeros(S, **kw))
        if cfg.skip_connection:
            self.W_skip = nn.Parameter(torch.zeros(D_out, D, **kw))
        if self.W_dec.device.type != "meta":  # a meta SAE holds shapes only: nothing to draw
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random unit-norm decoder rows; encoder = decoder transpose (Gao et al. 2024 §A.1)."""
        self.W_dec.normal_()
        self.set_decoder_unit_norm()
        if self.cfg.d_out is None:
            self.W_enc.copy_(self.W_dec.T)
        else:  # a transcoder's encoder and decoder live in different spaces
            self.W_enc.normal_()
            self.W_enc.div_(self.W_enc.norm(dim=0, keepdim=True))

    @property
    def centers_input(self) -> bool:
        """True if b_dec is subtracted from x before encoding."""
        return self.cfg.apply_b_dec_to_input and self.cfg.d_out is None

    @property
    def unit_norm_decoder(self) -> bool:
        """True if training keeps decoder rows at unit norm. ReLU does not: its L1 penalty is
        weighted by the row norms, so the norm is free (Anthropic, "Circuits Updates - April
        2024"); every other architecture would otherwise shrink latents and grow rows."""
        return self.cfg.architecture != "relu"

    @property
    def has_learned_threshold(self) -> bool:
        """jumprelu always; batchtopk/matryoshka once training has estimated the threshold."""
        if self.cfg.architecture == "jumprelu":
            return True
        if self.cfg.architecture in ("batchtopk", "matryoshka"):
            return bool((self.threshold > 0).any())
        return False

    def _in(self, x: Tensor) -> Tensor:
        """`x` in the SAE's dtype: where a bfloat16 model's activations meet float32 weights."""
        return x if x.dtype == self.W_enc.dtype else x.to(self.W_enc.dtype)

    def pre_activations(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Encoder pre-activations (for gated: the gate path)."""
        x = self._in(x)
        b = self.b_gate if self.cfg.architecture == "gated" else self.b_enc
        if not torch.is_grad_enabled() or not (self.W_enc.requires_grad or x.requires_grad):
            # Inference: one fused addmm (no graph to shape).
            xc = x - self.b_dec if self.centers_input else x
            return torch.addmm(b, xc.reshape(-1, xc.shape[-1]), self.W_enc).reshape(
                *x.shape[:-1], -1
            )
        if not self.centers_input:
            return x @ self.W_enc + b
        # The value of (x - b_dec) @ W_enc + b, bit for bit: the second b_dec term is zero.
        # It carries b_dec's gradient as -(sum_b grad_pre) @ W_enc.T, one vector-matrix
        # product, where differentiating x - b_dec would cost a full [B, d_sae] x [d_sae, d_in]
        # matmul, as much as the encoder itself.
        b_dec_zero = self.b_dec - self.b_dec.detach()
        return (x - self.b_dec.detach()) @ self.W_enc + (b - b_dec_zero @ self.W_enc)

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Latents at inference: topk keeps exactly k per row (at most k if fewer are positive);
        batchtopk/matryoshka apply their learned threshold, or per-row topk before one exists;
        jumprelu applies its threshold; relu is plain."""
        arch = self.cfg.architecture
        pre = self.pre_activations(x)
        if arch == "relu":
            return pre.relu()
        if arch == "gated":
            x = self._in(x)
            xc = x - self.b_dec if self.centers_input else x
            mag = (xc @ (self.W_enc * self.r_mag.exp()) + self.b_mag).relu()
            return mag * (pre > 0).to(mag.dtype)
        if arch == "topk" or not self.has_learned_threshold:
            vals, idx = pre.topk(self.cfg.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter_(-1, idx, vals.relu())
        # JumpReLU form, as SAELens computes it: relu(pre) * (pre > threshold).
        return pre.relu() * (pre > self.threshold).to(pre.dtype)

    def encode_sparse(self, x: Float[Tensor, "... d_in"]) -> SparseCodes:
        """The latents of `encode(x)` in sparse form, without a dense [..., d_sae] latent tensor
        on the TopK path: (top_acts, top_indices) of width k for topk (and batchtopk/matryoshka
        before a threshold is learned); for threshold and ReLU encoders, of width the largest
        number of active latents in any row (zero-padded)."""
        arch = self.cfg.architecture
        if arch == "topk" or (arch in TOPK_FAMILY and not self.has_learned_threshold):
            vals, idx = self.pre_activations(x).topk(self.cfg.k, dim=-1, sorted=False)
            return SparseCodes(vals.relu(), idx)
        latents = self.encode(x)
        width = max(1, int((latents != 0).sum(-1).max())) if latents.numel() else 1
        vals, idx = latents.topk(min(width, latents.shape[-1]), dim=-1, sorted=False)
        return SparseCodes(vals, idx)

    def decode(
        self, latents: Float[Tensor, "... d_sae"] | SparseCodes
    ) -> Float[Tensor, "... d_out"]:
        """latents @ W_dec + b_dec; `SparseCodes` are decoded by gathering their k decoder rows
        per token. The skip term needs x, so `forward` adds it."""
        if isinstance(latents, SparseCodes):
            vals, idx = latents
            lead = idx.shape[:-1]
            flat = F.embedding_bag(
                idx.reshape(-1, idx.shape[-1]),
                self.W_dec,
                mode="sum",
                per_sample_weights=vals.reshape(-1, vals.shape[-1]).to(self.W_dec.dtype),
            )
            return flat.reshape(*lead, -1) + self.b_dec
        return latents @ self.W_dec + self.b_dec

    def skip(self, x: Float[Tensor, "... d_in"]) -> Tensor | float:
        return self._in(x) @ self.W_skip.T if self.cfg.skip_connection else 0.0

    def forward_sparse(self, x: Float[Tensor, "... d_in"]) -> SparseOutput:
        """`forward` with the latents in sparse form: a TopK SAE never makes a dense
        [..., d_sae] latent tensor (held-out scoring and `sae eval` use this)."""
        codes = self.encode_sparse(x)
        return SparseOutput(self.decode(codes) + self.skip(x), codes)

    def forward(self, x: Float[Tensor, "... d_in"]) -> SAEOutput:
        latents = self.encode(x)
        return SAEOutput(self.decode(latents) + self.skip(x), latents)

    # ---- decoder norms -------------------------------------------------------------------

    @torch.no_grad()
    def set_decoder_unit_norm(self) -> None:
        """Rescale each decoder row to unit norm (changes outputs; use during training)."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Drop the part of W_dec.grad parallel to each row, so Adam's step does not fight the
        unit-norm constraint (Bricken et al. 2023; as in sparsify). Call between backward and
        step, then `set_decoder_unit_norm` after the step."""
        if self.W_dec.grad is None:
            return
        unit_SO = self.W_dec / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        parallel_S = (self.W_dec.grad * unit_SO).sum(dim=1, keepdim=True)
        self.W_dec.grad.sub_(parallel_S * unit_SO)

    @torch.no_grad()
    def fold_decoder_norm(self) -> None:
        """Move decoder row norms into the encoder so W_dec rows are unit norm and `forward`
        is unchanged: latent i is multiplied by n_i and its decoder row divided by n_i.
        Refused where it would change which latents fire (topk; batchtopk before a threshold)."""
        n_S = self.W_dec.norm(dim=1).clamp_min(1e-12)
        arch = self.cfg.architecture
        if arch == "topk" or (arch in TOPK_FAMILY and not self.has_learned_threshold):
            if torch.allclose(n_S, torch.ones_like(n_S), atol=1e-6):
                return
            raise ValueError(
                f"fold_decoder_norm would change which latents {arch} selects; keep its decoder "
                "at unit norm with set_decoder_unit_norm instead."
            )
        self.W_dec.div_(n_S[:, None])
        self.W_enc.mul_(n_S)
        for name in ("b_enc", "b_gate", "b_mag", "threshold"):
            if hasattr(self, name):
                getattr(self, name).mul_(n_S)

    @torch.no_grad()
    def fold_input_scale(self, scale: float, target_scale: float | None = None) -> None:
        """The SAE was trained on x * scale (and target * target_scale, default scale); rewrite
        the weights so it maps raw x to raw x_hat. Latents are unchanged; x_hat is the old
        x_hat divided by target_scale."""
        s_in = float(scale)
        s_out = s_in if target_scale is None else float(target_scale)
        if not (s_in > 0 and s_out > 0 and math.isfinite(s_in) and math.isfinite(s_out)):
            raise ValueError(f"scale={scale} and target_scale={target_scale} must be > 0.")
        if self.centers_input and s_in != s_out:
            raise ValueError(
                f"target_scale={target_scale} must equal scale={scale} for an autoencoder."
            )
        # Pre-activations become ((s x - b_dec) W_enc + b_enc) computed from raw x; gated's
        # magnitude path uses W_enc * exp(r_mag), so it follows W_enc.
        self.W_enc.mul_(s_in)
        self.W_dec.div_(s_out)
        self.b_dec.div_(s_out)
        if self.cfg.skip_connection:
            self.W_skip.mul_(s_in / s_out)

    # ---- initialisation --------------------------------------------------------------------

    @torch.no_grad()
    def init_from_data(
        self,
        x_sample: Float[Tensor, "N d_in"],
        target_sample: Float[Tensor, "N d_out"] | None = None,
        method: Literal["mean", "geometric_median"] = "geometric_median",
        rows: Literal["whitened", "random"] = "whitened",
        data_fraction: float = DATA_ROW_FRACTION,
    ) -> None:
        """Initialise from a sample of activations.

        b_dec = mean or geometric median of the target (Bricken et al. 2023 use the geometric
        median). Decoder rows: with rows="whitened" (an SAE, not a transcoder), the first
        min(N, round(data_fraction * d_sae)) rows are the sample's centred rows whitened by its
        covariance (`whitened_rows`), the rest random; with rows="random", all random (Gao et al.
        2024 §A.1).
        All at unit norm, W_enc = W_dec.T, then W_enc scaled so the first reconstruction is the
        least-squares fit to the centred target (docs/methods.md, "Initialisation"; both choices
        measured in BENCHMARKS.md, 'Training defaults: the measurements behind them').
        """
        if method not in ("mean", "geometric_median"):
            raise ValueError(f"method={method!r} must be 'mean' or 'geometric_median'.")
        if rows not in ("whitened", "random"):
            raise ValueError(f"rows={rows!r} must be 'whitened' or 'random'.")
        if not 0 <= data_fraction <= 1:
            raise ValueError(f"data_fraction={data_fraction!r} must be between 0 and 1.")
        if self.cfg.d_out is not None and target_sample is None:
            raise ValueError("target_sample is required to initialise a transcoder (d_out set).")
        t = x_sample if target_sample is None else target_sample
        t = t.to(self.W_dec.dtype)
        x_sample = x_sample.to(self.W_dec.dtype)
        center = t.mean(0) if method == "mean" else geometric_median(t)
        self.reset_parameters()
        self.b_dec.copy_(center)
        for name in ("b_enc", "b_gate", "b_mag", "r_mag"):
            if hasattr(self, name):
                getattr(self, name).zero_()
        if rows == "whitened" and self.cfg.d_out is None:
            w = whitened_rows(x_sample - self.b_dec, round(data_fraction * self.cfg.d_sae))
            self.W_dec[: len(w)] = w
            self.W_enc.copy_(self.W_dec.T)
        self.fit_encoder_scale(x_sample, t - center)

    @torch.no_grad()
    def fit_encoder_scale(self, x_sample: Tensor, tc_sample: Tensor) -> None:
        """Scale W_enc by the least-squares factor c minimising |c * recon - tc|^2 (recon: the
        reconstruction of `x_sample` less b_dec, tc: the centred target), so the first
        reconstruction explains as much of the sample as it can. The codes are linear in c
        (b_enc = 0; TopK's selection does not depend on it), so scaling W_enc scales them."""
        r = (self.decode(self.encode(x_sample)) - self.b_dec).double()
        denom = r.pow(2).sum()
        c = float((r * tc_sample.double()).sum() / denom) if denom > 0 else 0.0
        if c > 0:
            self.W_enc.mul_(c)
