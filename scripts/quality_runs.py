"""One short training run for the few-step quality grids (issue 11), printed as one JSON line.

    python scripts/quality_runs.py syn "ADAM_BETAS=(0.9,0.95)" --eval-tokens 16384
    python scripts/quality_runs.py mini --batch 1024 --lr 3e-3 --tokens 500000

`syn`: the synthetic set d 256, 2048 true unit directions, each firing with p = 8/2048, U(0,1)
magnitudes; TopK k 8, d_sae 2048, batch 4096 by default; prints MMCS and the fraction of true
features recovered at cos > 0.9. `mini`: `--activations /work/bench/train.npy` (made by
scripts/make_bench_acts.py), held-out FVU on `eval.npy`; TopK d_sae 3072, k 32 by default.
NAME=VALUE patches override a training constant of sae/config/schema.py for this run (ADAM_BETAS,
LR_WARMUP, LR_DECAY, GRAD_CLIP, B_DEC_INIT; ADAM_EPS sets Adam's eps), an SAEConfig field (aux_coefficient, aux_k),
`DECODER_INIT=random` (random decoder rows, the init before session 10; the default equals
`dec_init=0.3333 dec_white=1`),
`init_scale=c` (W_enc = c W_dec^T after the data init), `dec_init=f` (a fraction f of the
decoder rows set to unit centred rows of the first batch, in the order of torch's seeded RNG,
W_enc = W_dec^T rescaled by the least-squares rule; `dec_white=1` whitens those rows by the
batch's covariance first), `freeze_benc=1`, `k_anneal=(F,M)`
(k starts at M k and falls linearly to k by F of the run), or `bf16_encoder=1`
(inputs, weights and output of the encoder GEMM rounded to bfloat16 as `--autocast` rounds them,
the product in float32: autocast's numerics on a CPU whose bf16 GEMM is too slow to run it).
`sparsify`: EleutherAI sparsify's SparseCoder on the same `mini` rows and held-out rows, or
(`--on syn`) on the same synthetic generator (`--peer-opt signum|adam`, `--raw`): the side-by-side
figures.
"""

import argparse
import ast
import contextlib
import io
import json
import resource
import sys
import time

import torch

import sae.model.sae as S
import sae.training.members as M
import sae.training.train as T
from sae.analysis.matching import compare_dictionaries
from sae.analysis.synthetic import SyntheticConfig, SyntheticData
from sae.config.schema import SAEConfig, StoreConfig, TrainConfig
from sae.io.records import TrainSummary

p = argparse.ArgumentParser()
p.add_argument("kind", choices=["syn", "mini", "sparsify"])
p.add_argument("--tokens", type=int, default=500_000)
p.add_argument("--batch", type=int, default=4096)
p.add_argument("--d-sae", type=int, default=None)
p.add_argument("--k", type=int, default=None)
p.add_argument(
    "--arch",
    default="topk",
    choices=["topk", "batchtopk", "matryoshka", "relu", "jumprelu"],
    help="ours only",
)
p.add_argument("--lr", type=float, default=None)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--dead", type=int, default=None, help="dead_tokens (default: the trainer's)")
p.add_argument("--eval-tokens", type=int, default=65536)
p.add_argument("--out", default="/tmp/s4q/run")
p.add_argument("--tag", default="")
p.add_argument("--bench", default="/work/bench")
p.add_argument("--train", default="train.npy", help="`mini`: training rows in --bench")
p.add_argument("--eval", default="eval.npy", help="`mini`: held-out rows in --bench")
p.add_argument("--log", default=None, help="append the JSON line to this file")
p.add_argument(
    "--peer-opt",
    choices=["signum", "adam"],
    default="signum",
    help="`sparsify`: its Trainer's default (schedule-free sign descent) or its Adam",
)
p.add_argument(
    "--autocast",
    choices=["false", "true", "auto"],
    default="false",
    help="bf16 autocast of the SAE step (default false: the grids in BENCHMARKS.md are float32)",
)
p.add_argument("--raw", action="store_true", help="`sparsify`: no unit-norm input scaling")
p.add_argument("--on", choices=["mini", "syn"], default="mini", help="`sparsify`: which data")
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

        def init(self, x, y=None, method="geometric_median", rows="whitened", _c=v, _o=orig):
            _o(self, x, y, method, rows)
            with torch.no_grad():
                self.W_enc.copy_(self.W_dec.T * _c)

        S.SAE.init_from_data = init
    elif name == "dec_init":  # a fraction of the decoder rows = the first batch's centred rows
        orig = S.SAE.init_from_data
        white = ("dec_white", "1") in (tuple(p.split("=", 1)) for p in a.patch)

        def init(self, x, y=None, method="geometric_median", rows=None, _f=v, _w=white, _o=orig):
            if _w:  # the production init with this share of rows from data
                _o(self, x, y, method, "whitened", float(_f))
            else:  # raw rows replace random ones, as in session 9
                _o(self, x, y, method, "random")
                raw_rows(self, x, float(_f))

        S.SAE.init_from_data = init
    elif name == "bf16_encoder":  # the numerics of --autocast's bf16 encoder GEMM, at fp32 speed
        import sae.model.step as L

        def bf16_pre(xc_BD, W_enc_DS, b_enc_S, _o=L.encoder_pre):
            def r(t):
                return t.bfloat16().float()

            return r(_o(r(xc_BD), r(W_enc_DS), r(b_enc_S)))

        L.encoder_pre = bf16_pre
    elif (
        name == "k_anneal"
    ):  # (F, M): TopK's k starts at M * k, falls linearly to k by F of the run
        import dataclasses

        import sae.model.step as L

        frac, mult = v
        steps_total = max(1, a.tokens // a.batch)
        calls = [0]

        def annealed(sae, *args, _o=L._topk_family, _f=frac, _m=mult, _n=steps_total, _c=calls):
            if not sae.training:
                return _o(sae, *args)
            cfg = sae.cfg
            t = _c[0] / max(1, round(_f * _n))
            _c[0] += 1
            k_t = round(cfg.k * (1 + (_m - 1) * max(0.0, 1.0 - t)))
            sae.cfg = dataclasses.replace(cfg, k=k_t)
            try:
                return _o(sae, *args)
            finally:
                sae.cfg = cfg

        L._topk_family = annealed
    elif name == "freeze_benc":
        ob = T.build_members

        def bm(*args, _o=ob):
            ms = _o(*args)
            for m in ms:
                m.sae.b_enc.requires_grad_(False)
            return ms

        T.build_members = bm
    else:
        import sae.model.step as L

        for mod in (M, T, L):
            if hasattr(mod, name):
                setattr(mod, name, v)
        if name == "ADAM_EPS":
            orig_adam = torch.optim.Adam

            class A(orig_adam):
                def __init__(self, *args, _eps=v, **kw):
                    kw["eps"] = _eps
                    super().__init__(*args, **kw)

            torch.optim.Adam = A


@torch.no_grad()
def raw_rows(sae: S.SAE, x: torch.Tensor, fraction: float) -> None:
    """The first round(fraction * d_sae) decoder rows (at most len(x)) = the sample's centred
    rows, unwhitened, in the order of torch's seeded RNG, at unit norm; W_enc = W_dec^T with
    `SAE.fit_encoder_scale`'s least-squares scale (`dec_init=f` without `dec_white=1`)."""
    tc = x - sae.b_dec
    rows = tc[torch.randperm(len(x))[: round(fraction * sae.cfg.d_sae)]]
    sae.W_dec[: len(rows)] = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-8)
    sae.W_enc.copy_(sae.W_dec.T)
    sae.fit_encoder_scale(x, tc)


def emit(res: dict) -> None:
    """Print the run's JSON line and append it to --log."""
    print(json.dumps(res), flush=True)
    if a.log:
        from sae.fsutil import open_append

        with open_append(a.log, None) as f:  # the file --log names, whoever's folder it is in
            f.write(json.dumps(res) + "\n")


SYN = SyntheticConfig(d_in=256, n_features=2048, mean_active=8.0, prob_decay=1.0, seed=0)


def sparsify_run(a) -> dict:
    """EleutherAI sparsify's SparseCoder on the `mini` rows: batches of consecutive rows in a
    seeded random order, its default LR for the optimizer, AuxK at 1/32 with Adam (its Trainer
    adds none with sign descent), decoder gradient projected as its Trainer does; held-out FVU
    over the first --eval-tokens rows of the held-out file, as ours (variance about the mean)."""
    import numpy as np
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.sign_sgd import SignSGD

    B = a.batch
    if a.on == "syn":  # the generator's stream; held-out rows from batch indices far beyond it
        data = SyntheticData(SYN)
        S, K = a.d_sae or 2048, a.k or 8
        held = torch.cat(
            [data.sample(10**7 + j, 4096).x_BD for j in range(-(-a.eval_tokens // 4096))]
        )
        batch_at = lambda step: data.sample(step, B).x_BD  # noqa: E731
        d_in = SYN.d_in
    else:
        acts = np.load(f"{a.bench}/{a.train}", mmap_mode="r")
        held = np.load(f"{a.bench}/{a.eval}", mmap_mode="r")[: a.eval_tokens]
        held = torch.from_numpy(held.copy())
        S, K = a.d_sae or 3072, a.k or 32
        order = np.random.default_rng(a.seed).permutation(len(acts) // B)

        def batch_at(step):
            i = order[step % len(order)] * B
            return torch.from_numpy(np.ascontiguousarray(acts[i : i + B]))

        d_in = acts.shape[1]
    torch.manual_seed(a.seed)
    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=S, k=K))
    if a.peer_opt == "signum":
        lr = a.lr or 5e-3 / (S / 2**14) ** 0.5
        opt = ScheduleFreeWrapper(SignSGD(sae.parameters(), lr=lr), momentum=0.95)
        opt.train()
    else:
        lr = a.lr or 2e-4 / (S / 2**14) ** 0.5
        opt = torch.optim.Adam(sae.parameters(), lr=lr)
    since = torch.zeros(S, dtype=torch.long)
    scale, t0 = None, time.time()
    for step in range(a.tokens // B):
        x = batch_at(step)
        if scale is None:
            scale = 1.0 if a.raw else float(x.pow(2).sum(-1).mean().rsqrt())
            sae.b_dec.data = (x * scale).mean(0)
        out = sae(x * scale, dead_mask=since > (a.dead or 10_000_000))
        loss = out.fvu + (out.auxk_loss / 32 if a.peer_opt == "adam" else 0)
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        if a.peer_opt == "adam":
            sae.set_decoder_norm_to_unit_norm()
        since += B
        since[out.latent_indices.flatten()] = 0
    if a.peer_opt == "signum":
        opt.eval()  # the schedule-free average, the weights it evaluates
    err, fired, e = 0.0, torch.zeros(S, dtype=torch.bool), held * scale
    with torch.no_grad():
        for j in range(0, len(e), 4096):
            o = sae(e[j : j + 4096])
            err += float((o.sae_out - e[j : j + 4096]).double().pow(2).sum())
            fired[o.latent_indices.flatten()] = True
        var = float((e.double() - e.double().mean(0)).pow(2).sum())
    res = {}
    if a.on == "syn":
        m = compare_dictionaries(data.dictionary_ND, sae.W_dec.detach().float())
        res = {"mmcs": round(float(m.mmcs), 4), "rec90": round(float(m.recovery_90), 4)}
    return res | {
        "kind": "sparsify",
        "on": a.on,
        "opt": a.peer_opt,
        "raw": a.raw,
        "tokens": a.tokens,
        "batch": B,
        "lr": lr,
        "seed": a.seed,
        "fvu": round(err / var, 4),
        "dead_pct": round(100 * (1 - fired.float().mean().item()), 2),
        "wall": round(time.time() - t0, 1),
    }


common = dict(
    total_tokens=a.tokens,
    eval_tokens=a.eval_tokens,
    lr=a.lr,
    seed=a.seed,
    dead_tokens=a.dead,
    out=a.out,
    quiet=True,
    checkpoint_every=0,
    autocast={"false": False, "true": True, "auto": "auto"}[a.autocast],
)
if a.kind == "syn":
    syn = SYN
    tc = TrainConfig(
        activations="synthetic",
        synthetic=syn,
        store=StoreConfig(batch_size=a.batch, buffer_tokens=65536, normalize=True),
        sae=SAEConfig(d_in=None, architecture=a.arch, d_sae=a.d_sae or 2048, k=a.k or 8, **sae_kw),
        **common,
    )
else:
    tc = TrainConfig(
        activations=f"{a.bench}/{a.train}",
        eval_activations=f"{a.bench}/{a.eval}",
        store=StoreConfig(batch_size=a.batch, normalize=True),
        sae=SAEConfig(d_in=None, architecture=a.arch, d_sae=a.d_sae or 3072, k=a.k or 32, **sae_kw),
        **common,
    )
if a.kind == "sparsify":
    emit(sparsify_run(a))
    raise SystemExit(0)
from sae.fsutil import ForeignFolderError, remove  # noqa: E402

try:  # delete only a run of ours (sae/fsutil.py's marker) or an empty folder, never what --out names
    remove(a.out, "run")
except ForeignFolderError as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2) from None
T.CHECKPOINT_SECONDS = 10**9
t0 = time.time()
tr = T.Trainer(tc)
with contextlib.redirect_stdout(io.StringIO()):
    finals = tr.fit()
res = {
    "tag": a.tag,
    "kind": a.kind,
    "arch": a.arch,
    "tokens": a.tokens,
    "batch": a.batch,
    "lr": tr.members[0].lr,
    "patch": a.patch,
    "seed": a.seed,
    "autocast": tr.tcfg.autocast,
}
summ = TrainSummary.read(finals[0])
res["fvu"] = None if summ.fvu is None else round(summ.fvu, 4)
res["dead_pct"] = summ.dead_pct
res["l0"] = None if summ.l0 is None else round(summ.l0, 2)
if a.kind == "syn":
    true = SyntheticData(syn).dictionary_ND
    m = compare_dictionaries(true, tr.members[0].sae.W_dec.detach().float())
    res["mmcs"] = round(float(m.mmcs), 4)
    res["rec90"] = round(float(m.recovery_90), 4)
res["wall"] = round(time.time() - t0, 1)
res["rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
emit(res)
