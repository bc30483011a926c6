"""The sparse TopK step (sae/model/kernels.py) against plain dense autograd, and sparse inference.

Each gradient test rebuilds the loss the way the dense code did before the sparse kernels (full
[B, d_sae] latents, `@` products, autograd through everything) and asks for the same gradient on
every parameter to 1e-5 relative (float32), with and without AuxK."""

import pytest
import torch

from sae.model.sae import SAE, SAEConfig, SparseCodes
from sae.model.step import batch_topk, fvu, total_variance, training_forward

D, S, K, B = 24, 96, 6, 128

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make(arch: str, seed: int = 0, **kw) -> SAE:
    torch.manual_seed(seed)
    if arch == "matryoshka":
        kw.setdefault("matryoshka_prefixes", [16, 48, S])
    sae = SAE(SAEConfig(architecture=arch, d_in=D, d_sae=S, k=K, aux_k=8, **kw))
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return sae


def data(seed: int = 1, d: int = D) -> torch.Tensor:
    return torch.randn(B, d, generator=torch.Generator().manual_seed(seed)) + 0.3


def dense_reference(sae: SAE, x, t, dead):
    """The loss with dense latents and plain autograd (the pre-sparse-kernel computation)."""
    cfg = sae.cfg
    xc = x - sae.b_dec if sae.centers_input else x
    pre = xc @ sae.W_enc + sae.b_enc
    if cfg.architecture == "topk":
        vals, idx = pre.topk(cfg.k, dim=-1, sorted=False)
        lat = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
    else:
        idx, vals = batch_topk(pre, cfg.k)
        lat = torch.zeros_like(pre).scatter(-1, idx, vals)
    base = sae.b_dec + sae.skip(x)
    x_hat = lat @ sae.W_dec + base
    var = total_variance(t)
    loss = fvu(x_hat, t, var)
    for m in cfg.prefixes[:-1] if cfg.architecture == "matryoshka" else []:
        loss = loss + fvu(lat[:, :m] @ sae.W_dec[:m] + base, t, var)
    if dead is not None and dead.any():
        dead_pre = pre.masked_fill(~dead, float("-inf"))
        a_vals, a_idx = dead_pre.topk(min(cfg.k_aux, int(dead.sum())), dim=-1)
        a_lat = torch.zeros_like(pre).scatter(-1, a_idx, a_vals.relu())
        e = (t - x_hat).detach()
        loss = loss + cfg.aux_coefficient * fvu(a_lat @ sae.W_dec, e, total_variance(e))
    return loss


def grads(sae: SAE, loss) -> dict[str, torch.Tensor]:
    names = [n for n, p in sae.named_parameters()]
    got = torch.autograd.grad(loss, [p for p in sae.parameters()], allow_unused=True)
    return {n: g for n, g in zip(names, got, strict=True) if g is not None}


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
@pytest.mark.parametrize("n_dead", [0, 6, 30, 60])
@pytest.mark.parametrize("transcoder", [False, True])
def test_sparse_step_gradients_equal_dense_autograd(arch, n_dead, transcoder):
    """Pins: the sparse backward (encoder weight gradient from the B x k selected entries,
    decoder gradient on gathered rows, AuxK on dead latents) is the dense gradient, for every
    parameter, to 1e-5 relative in float32. With aux_k 8, AuxK takes each of its paths: 6 dead
    latents all kept (dense columns), 30 masked to 8 per row (dense columns, up to
    AUX_DENSE_LIMIT x aux_k), 60 as gathered rows."""
    kw = {"d_out": 20, "skip_connection": True} if transcoder else {}
    sae = make(arch, **kw)
    sae.eval()  # no threshold update between the two computations
    x = data()
    t = data(seed=2, d=20) if transcoder else x
    dead = torch.zeros(S, dtype=torch.bool)
    with_aux = n_dead > 0
    dead[torch.randperm(S, generator=torch.Generator().manual_seed(3))[:n_dead]] = True
    out = training_forward(sae, x, t if transcoder else None, dead if with_aux else None)
    ref = dense_reference(sae, x, t, dead if with_aux else None)
    assert torch.allclose(out.loss, ref, rtol=1e-5, atol=0)
    assert (out.aux > 0) == with_aux
    got, want = grads(sae, out.loss), grads(sae, ref)
    assert got.keys() == want.keys()
    for name in want:
        err = (got[name] - want[name]).norm() / want[name].norm()
        assert err <= 1e-5, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("n_dead", [0, 30, 60])
def test_sparse_step_input_gradient_equals_dense(n_dead):
    """Pins: when x itself needs a gradient (e.g. an SAE spliced into a model), the sparse
    encoder returns sum_m g[b, m] W_enc[:, idx[b, m]], as dense autograd does, AuxK's dense
    columns (30 dead) and gathered rows (60) included."""
    sae = make("topk")
    dead = torch.zeros(S, dtype=torch.bool)
    dead[:n_dead] = True
    dead_or_none = dead if n_dead else None
    x = data().requires_grad_()
    (gx,) = torch.autograd.grad(training_forward(sae, x, None, dead_or_none).loss, [x])
    x2 = x.detach().clone().requires_grad_()
    (gx_ref,) = torch.autograd.grad(dense_reference(sae, x2, x2, dead_or_none), [x2])
    assert (gx - gx_ref).norm() / gx_ref.norm() <= 1e-5


def test_auxk_gradient_reaches_only_dead_latents():
    """Pins: AuxK restricted to dead latents: its gradient on the encoder columns of live
    latents is exactly zero."""
    sae = make("topk")
    x = data()
    dead = torch.zeros(S, dtype=torch.bool)
    dead[:40] = True
    aux = training_forward(sae, x, dead_mask_S=dead).aux
    (g,) = torch.autograd.grad(aux, [sae.W_enc])
    assert g[:, 40:].abs().max() == 0 and g[:, :40].abs().max() > 0


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu", "jumprelu"])
def test_encode_sparse_decodes_like_dense(arch):
    """Pins: `encode_sparse` holds the same latents as `encode`, and `decode` of the sparse
    codes equals `decode` of the dense latents, leading dimensions kept."""
    sae = make(arch)
    if arch == "batchtopk":
        training_forward(sae, data(seed=7))  # learns the threshold: inference is then JumpReLU
        assert sae.has_learned_threshold
    x = data().reshape(4, B // 4, D)
    with torch.no_grad():
        dense = sae.encode(x)
        codes = sae.encode_sparse(x)
        assert isinstance(codes, SparseCodes)
        assert torch.equal(codes.to_dense(S), dense)
        assert torch.allclose(sae.decode(codes), sae.decode(dense), atol=1e-5)
    if arch == "topk":
        assert codes.top_indices.shape == (4, B // 4, K)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
@pytest.mark.parametrize("n_dead", [0, 30, 60])
def test_autocast_step_gives_float32_gradients_near_the_float32_step(arch, n_dead):
    """Pins `--autocast` (bf16 encoder GEMM, fp32 master weights): every parameter gets a
    float32 gradient through each AuxK path, near the float32 step's. Not equal: bf16
    pre-activations carry 0.4% rounding and flip near-tied selections (3 of 128 rows here), which
    moves the gradients by 2-5%; a missing or misrouted term moves them by order 1."""
    sae = make(arch)
    sae.eval()
    x = data()
    dead = torch.zeros(S, dtype=torch.bool)
    dead[torch.randperm(S, generator=torch.Generator().manual_seed(3))[:n_dead]] = True
    dead_or_none = dead if n_dead else None
    want = grads(sae, training_forward(sae, x, None, dead_or_none).loss)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = training_forward(sae, x, None, dead_or_none)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    got = grads(sae, out.loss)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == torch.float32, name
        err = (got[name] - want[name]).norm() / want[name].norm()
        assert err <= 0.1, f"{name}: relative error {err:.2e}"
    if n_dead:  # AuxK's own gradient, which the main term would otherwise swamp
        want = grads(sae, training_forward(sae, x, None, dead).aux)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = grads(sae, training_forward(sae, x, None, dead).aux)
        for name in ("W_enc", "W_dec"):
            err = (got[name] - want[name]).norm() / want[name].norm()
            assert got[name].dtype == torch.float32 and err <= 0.1, f"aux {name}: {err:.2e}"
