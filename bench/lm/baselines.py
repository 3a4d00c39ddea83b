"""Baselines of the language-model benchmark (``docs/lm-protocol.md``) and
its LDS. Every baseline gives ``tau (m queries, n documents)`` with the
protocol's sign (``tau > 0``: including document ``i`` raises ``f(q)``);
genre scores ``(m, 15)`` are sums over each genre's documents
(:func:`to_sources`).

- **Lexical overlap** (model-free, :func:`lexical_overlap`):
  ``tau(q, i) = sum over distinct word ids w in both q and d_i of idf(w)``,
  ``idf(w) = log(n / df(w))`` with ``df`` over the ``n`` training documents.
  *Choices:* a document is the part trained on, its first 260 tokens (its
  4 blocks); the query is all 65 tokens of its window; ``<unk>`` (id 0) is
  not a word; a word counts once (set overlap, no term frequency), so the
  score is symmetric in ``(q, d)`` for a fixed idf.
- **Gradient dot product** (:func:`grad_dot`): ``tau(q, i) = grad f(q) .
  sum_{blocks b of i} (-grad of b's summed token loss)`` at the full-data
  model, averaged over the ensemble members. The ``(450, p)`` document
  gradient matrix is computed once per member (a loop over documents of the
  gradient of the document's summed token log-prob; ``torch.func`` optional).
- **TRAK** (:func:`trak_scores`): traker's formula with traker's own
  projector and score computer (``trak.projectors.BasicProjector``, normal
  entries, ``seed = 0``, ``model_id`` = member, ``block_size = k`` so the
  ``(p, k)`` matrix is generated once and stays resident;
  ``trak.score_computers.BasicScoreComputer`` in float32 with
  ``lambda_reg``): per member, ``phi = P^T g / sqrt(p)`` for the model
  output ``F(x; theta) = sum over the rows of x of sequence_logprob`` —
  for a document its 4 blocks (``= (1/64) x`` the summed block log-prob,
  a constant factor), for a query its one window (``= f(q)``);
  out-to-loss weight ``Q = 1`` (the loss is ``-F``, ``|dloss/dF| = 1``);
  ``tau_e = phi_q (Phi^T Phi + lambda I)^-1 Phi^T`` (with traker's
  rescaling of the inverse by its mean absolute entry), ensemble ``tau =
  mean_e tau_e`` as ``TRAKer.finalize_scores`` does. Only the gradient
  computation and storage are ours (no memmap saver); ``LMModelOutput``
  expresses the same output as a traker ``AbstractModelOutput``, and the
  test checks ours against a full ``TRAKer`` run with it on a tiny GPT.
- **LDS** (:func:`lds`): mean over queries of the Spearman correlation,
  across subsets, between ``sum_{i in subset} tau(q, i)`` and the target;
  ``centred=True`` first subtracts from targets and from predictions each
  subset's mean over the queries.

    python -m bench.lm.baselines [--members 5] [--k 2048] [--lambdas 1e-3,1e-2,...]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterable

import numpy as np
import torch
from scipy.stats import rankdata
from torch.func import functional_call, grad, vmap

from influence.text.gpt import GPT, sequence_logprob, token_logprobs

# ---------------------------------------------------------------------------
# LDS


def subsets_to_mask(subsets: np.ndarray, n: int) -> np.ndarray:
    """``(J, s)`` index rows (or an already boolean ``(J, n)``) → ``(J, n)`` bool."""
    subsets = np.asarray(subsets)
    if subsets.dtype == bool:
        return subsets
    m = np.zeros((subsets.shape[0], n), dtype=bool)
    np.put_along_axis(m, subsets.astype(np.int64), True, axis=1)
    return m


def lds_per_query(tau: np.ndarray, subsets: np.ndarray, targets: np.ndarray, centred: bool = False) -> np.ndarray:
    """``tau (m, n)``, ``subsets (J, n)`` bool or ``(J, s)`` indices, ``targets
    (J, m)`` → Spearman correlation per query ``(m,)`` (nan where a column
    is constant)."""
    mask = subsets_to_mask(subsets, tau.shape[1]).astype(np.float64)
    pred = mask @ np.asarray(tau, dtype=np.float64).T  # (J, m)
    tgt = np.asarray(targets, dtype=np.float64)
    if centred:
        pred = pred - pred.mean(axis=1, keepdims=True)
        tgt = tgt - tgt.mean(axis=1, keepdims=True)
    rp = rankdata(pred, axis=0)
    rt = rankdata(tgt, axis=0)
    rp -= rp.mean(axis=0)
    rt -= rt.mean(axis=0)
    den = np.sqrt((rp**2).sum(0) * (rt**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rp * rt).sum(0) / np.where(den > 0, den, 1.0), np.nan)


def lds(tau: np.ndarray, subsets: np.ndarray, targets: np.ndarray, centred: bool = False) -> float:
    return float(np.nanmean(lds_per_query(tau, subsets, targets, centred)))


def to_sources(tau: np.ndarray, doc_source: np.ndarray, n_sources: int) -> np.ndarray:
    """``(m, n_docs)`` → ``(m, n_sources)``: sum over each source's documents."""
    onehot = np.zeros((len(doc_source), n_sources))
    onehot[np.arange(len(doc_source)), doc_source] = 1.0
    return np.asarray(tau, dtype=np.float64) @ onehot


# ---------------------------------------------------------------------------
# Lexical overlap


def _bag(rows: Iterable[Iterable[int]], vocab: int) -> np.ndarray:
    rows = list(rows)
    b = np.zeros((len(rows), vocab), dtype=bool)
    for r, ids in enumerate(rows):
        b[r, np.asarray(list(ids), dtype=np.int64)] = True
    b[:, 0] = False  # <unk> is not a word
    return b


def idf(doc_tokens: list[Iterable[int]], vocab: int) -> np.ndarray:
    """``log(n / df)`` per word id (0 where ``df = 0`` and for ``<unk>``)."""
    d = _bag(doc_tokens, vocab)
    df = d.sum(0)
    with np.errstate(divide="ignore"):
        return np.where(df > 0, np.log(len(d) / np.maximum(df, 1)), 0.0)


def lexical_overlap(
    query_tokens: list[Iterable[int]], doc_tokens: list[Iterable[int]], vocab: int, weights: np.ndarray | None = None
) -> np.ndarray:
    """``(m, n)``: idf-weighted overlap of distinct word ids. ``weights``:
    per-word weights (default: ``idf`` over ``doc_tokens``)."""
    w = idf(doc_tokens, vocab) if weights is None else np.asarray(weights, dtype=np.float64)
    q = _bag(query_tokens, vocab).astype(np.float64)
    d = _bag(doc_tokens, vocab).astype(np.float64)
    return (q * w) @ d.T


def corpus_lexical(c, qx: torch.Tensor, max_tokens: int = 260, vocab: int = 2000) -> np.ndarray:
    """Lexical overlap of query windows ``qx`` with the trained part (first
    ``max_tokens`` tokens) of every training document of corpus ``c``."""
    return lexical_overlap([r.tolist() for r in qx], [t[:max_tokens] for t in c.train_tokens], vocab)


def same_genre(query_genre: np.ndarray, doc_genre: np.ndarray) -> np.ndarray:
    """Diagnostic, not a method: ``tau(q, i) = 1`` iff document ``i`` has the
    genre of the query's held-out document (what a topical score can get from
    genre alone)."""
    return (np.asarray(query_genre)[:, None] == np.asarray(doc_genre)[None, :]).astype(np.float64)


# ---------------------------------------------------------------------------
# Gradients


def _model(spec, params: dict[str, torch.Tensor]) -> GPT:
    model = spec.build(0, next(iter(params.values())).dtype)
    model.load_state_dict(params)
    model.eval()
    return model


def flat(g: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    lead = g[names[0]].shape[0]
    return torch.cat([g[k].reshape(lead, -1) for k in names], dim=1)


def _grad_rows(model: GPT, xs: Iterable[torch.Tensor], out) -> torch.Tensor:
    params = list(model.parameters())
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(out(x), params)]) for x in xs]
    return torch.stack(rows)


def doc_gradients(model: GPT, doc_blocks: torch.Tensor, mean_targets: bool = False, vectorise: bool = False
                  ) -> torch.Tensor:
    """``doc_blocks (n, nb, 65)`` → ``(n, p)``: per document, the gradient of
    ``sum over its blocks of the summed token log-prob`` (= minus the gradient
    of the summed token loss; the protocol's sign). ``mean_targets``: of the
    mean per block instead (traker's ``LMModelOutput``; ``1/64`` of it).
    A loop of plain autograd per document (measured faster on one CPU core
    than ``vmap`` over documents of ``grad``: 2.6 s vs 4.5 s for 40 Brown
    documents); ``vectorise=True`` uses ``torch.func`` instead."""

    def out(x, p=None):
        lp = token_logprobs(model, x, p)
        return lp.mean(-1).sum() if mean_targets else lp.sum()

    if not vectorise:
        return _grad_rows(model, doc_blocks, out)
    params = {k: v.detach() for k, v in model.named_parameters()}
    g = vmap(grad(lambda p, x: out(x, p)), in_dims=(None, 0))
    return torch.cat([flat(g(params, doc_blocks[i : i + 25]), list(params)) for i in range(0, len(doc_blocks), 25)])


def query_gradients(model: GPT, qx: torch.Tensor) -> torch.Tensor:
    """``qx (m, 65)`` → ``(m, p)``: ``grad f(q)``, ``f = sequence_logprob``."""
    return _grad_rows(model, qx, lambda x: sequence_logprob(model, x.unsqueeze(0))[0])


def doc_block_tensor(blocks: torch.Tensor, block_document: torch.Tensor, n_docs: int) -> torch.Tensor:
    """``(n_docs, nb, 65)``; every document must have the same number of blocks."""
    counts = torch.bincount(block_document, minlength=n_docs)
    if not bool((counts == counts[0]).all()):
        raise ValueError("documents with different numbers of blocks")
    order = torch.argsort(block_document, stable=True)
    return blocks[order].reshape(n_docs, int(counts[0]), blocks.shape[1])


def grad_dot(q_grads: list[torch.Tensor], d_grads: list[torch.Tensor]) -> np.ndarray:
    """Mean over members of ``q_grads[e] @ d_grads[e].T`` → ``(m, n)``."""
    return np.mean([(q.double() @ d.double().T).numpy() for q, d in zip(q_grads, d_grads)], axis=0)


# ---------------------------------------------------------------------------
# TRAK


class LMModelOutput:
    """traker ``AbstractModelOutput`` for a language model: ``F(x) = sum over
    the rows of x (nb, 65) of the mean target log-prob``; out-to-loss 1.
    (Built lazily so importing this module does not need traker.)"""

    def __new__(cls):
        from trak.modelout_functions import AbstractModelOutput

        class _LM(AbstractModelOutput):
            def __init__(self) -> None:
                super().__init__()

            @staticmethod
            def get_output(model, weights, buffers, x, label):
                inp, tgt = x[:, :-1], x[:, 1:]
                logits = functional_call(model, (weights, buffers), (inp,))
                lp = logits.log_softmax(-1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
                return lp.mean(-1).sum()

            def get_out_to_loss_grad(self, model, weights, buffers, batch):
                return torch.ones(batch[0].shape[0], 1, dtype=batch[0].dtype if batch[0].is_floating_point()
                                  else torch.float32)

        return _LM()


def projector(p: int, k: int, member: int, seed: int = 0):
    """traker's CPU projector, matrix resident (``block_size = k``)."""
    from trak.projectors import BasicProjector, ProjectionType

    return BasicProjector(grad_dim=p, proj_dim=k, seed=seed, proj_type=ProjectionType.normal, device="cpu",
                          block_size=k, dtype=torch.float32, model_id=member)


def trak_features(grads: torch.Tensor, proj, member: int) -> torch.Tensor:
    """``phi = P^T g / sqrt(p)`` as ``TRAKer.featurize``/``score`` do."""
    return proj.project(grads.float(), model_id=member) / math.sqrt(grads.shape[1])


def trak_member_scores(phi_train: torch.Tensor, phi_q: torch.Tensor, lam: float) -> torch.Tensor:
    """traker's ``BasicScoreComputer``: ``phi_q (Phi (Phi^T Phi + lam I)^-1)^T``
    (inverse rescaled by its mean |entry|) → ``(m, n)``."""
    from trak.score_computers import BasicScoreComputer

    sc = BasicScoreComputer(dtype=torch.float32, device="cpu", lambda_reg=lam, logging_level=40)
    xtx = sc.get_xtx(phi_train.float())
    feats = sc.get_x_xtx_inv(phi_train.float(), xtx)
    acc = torch.zeros(phi_train.shape[0], phi_q.shape[0])  # traker's layout: (train, targets)
    sc.get_scores(feats, phi_q.float(), accumulator=acc)
    return acc.T


def trak_scores(phi_train: list[torch.Tensor], phi_q: list[torch.Tensor], lam: float, out_to_loss: float = 1.0
                ) -> np.ndarray:
    """Ensemble as ``TRAKer.finalize_scores``: ``(sum_e scores_e / E) * mean Q``."""
    acc = sum(trak_member_scores(a, b, lam) for a, b in zip(phi_train, phi_q))
    return (acc / len(phi_train) * out_to_loss).double().numpy()


def lam_grid(phi_train: list[torch.Tensor], rel: Iterable[float]) -> list[float]:
    """``lambda = r * mean eigenvalue of Phi^T Phi`` (averaged over members)."""
    tr = float(np.mean([float((f.double() ** 2).sum()) / f.shape[1] for f in phi_train]))
    return [r * tr for r in rel]


# ---------------------------------------------------------------------------
# The benchmark on the Brown ground truth


def main(argv: list[str] | None = None) -> int:
    from bench.lm.groundtruth import load_full_params, load_groundtruth, n_full_available
    from bench.lm.protocol import DEFAULT, N_GENRES, SPEC, corpus, doc_genre, queries

    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--k", type=int, default=2048)
    ap.add_argument("--lambdas", default="1e-4,1e-2,1,10,100,1e3", help="relative to the mean eigenvalue of Phi^T Phi")
    ap.add_argument("--timing-queries", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="json report path (default: the cache directory)")
    ap.add_argument("--from-cache", action="store_true",
                    help="only recompute the LDS of the cached scores (baselines-tau.npz) on the current ground truth")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    p = DEFAULT
    c = corpus()
    qx = queries(p)
    gt = load_groundtruth(p)
    q_genre = c.heldout_doc_source["genre"][c.queries(p.n_queries, p.query_seed)[1]]
    if a.from_cache:
        z = np.load(p.cache_dir() / "baselines-tau.npz")
        taus = {k: z[k] for k in z.files}
        taus.setdefault("same_genre", same_genre(q_genre, doc_genre(c)))
        evaluate(taus, gt, doc_genre(c), N_GENRES)
        return 0
    E = min(a.members, n_full_available(p))
    if E == 0:
        print("no full-data model in the cache yet")
        return 1
    genre = doc_genre(c)
    report: dict = {"members": E, "k": a.k, "J_doc": len(gt.doc_targets), "G_genre": len(gt.genre_targets),
                    "gt_seconds": gt.seconds, "heldout_ppl": gt.heldout_ppl.tolist(), "timing": {}, "lds": {}}
    print(f"ground truth: {report['J_doc']} doc subsets, {report['G_genre']} genre subsets, {E} members; "
          f"held-out ppl {np.round(gt.heldout_ppl, 1).tolist()}", flush=True)

    taus: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    taus["lexical"] = corpus_lexical(c, qx)
    report["timing"]["lexical_s"] = time.perf_counter() - t0
    taus["same_genre"] = same_genre(q_genre, genre)

    db = doc_block_tensor(c.blocks, c.block_document, len(c.train_tokens))
    qg, dg, phi_d, phi_q = [], [], [], []
    tm = {"doc_grads_s": [], "query_grads_s": [], "proj_gen_s": [], "proj_docs_s": [], "per_query": []}
    for e in range(E):
        model = _model(SPEC, load_full_params(e, p))
        t = time.perf_counter()
        G = doc_gradients(model, db)
        tm["doc_grads_s"].append(time.perf_counter() - t)
        t = time.perf_counter()
        Q = query_gradients(model, qx)
        tm["query_grads_s"].append(time.perf_counter() - t)
        t = time.perf_counter()
        proj = projector(G.shape[1], a.k, member=e)
        tm["proj_gen_s"].append(time.perf_counter() - t)
        t = time.perf_counter()
        # traker's TRAK output for a document is (1/64) x the summed block log-prob
        phi_d.append(trak_features(G / 64.0, proj, e))
        tm["proj_docs_s"].append(time.perf_counter() - t)
        phi_q.append(trak_features(Q, proj, e))
        qg.append(Q)
        dg.append(G)
        if e == 0:
            tm["per_query"] = per_query_timing(model, qx[: a.timing_queries], G, phi_d[0], proj, e)
        del proj
        print(f"member {e}: doc grads {tm['doc_grads_s'][-1]:.1f} s, query grads {tm['query_grads_s'][-1]:.1f} s, "
              f"projector {tm['proj_gen_s'][-1]:.1f} s, project docs {tm['proj_docs_s'][-1]:.1f} s", flush=True)
    report["timing"].update(tm)
    taus["grad_dot"] = grad_dot(qg, dg)
    taus["grad_dot_m1"] = grad_dot(qg[:1], dg[:1])
    del dg

    np.savez(p.cache_dir() / "baselines-phi.npz", k=a.k, **{f"phi_d{e}": f.numpy() for e, f in enumerate(phi_d)},
             **{f"phi_q{e}": f.numpy() for e, f in enumerate(phi_q)})
    rel = [float(x) for x in a.lambdas.split(",")]
    lams = lam_grid(phi_d, rel)
    t = time.perf_counter()
    sweep = {}
    for r, lam in zip(rel, lams):
        tau = trak_scores(phi_d, phi_q, lam)
        sweep[r] = tau
    report["timing"]["trak_inverse_and_scores_per_lambda_s"] = (time.perf_counter() - t) / len(rel)
    for r, tau in sweep.items():
        taus[f"trak_rel{r:g}"] = tau
    lams1 = lam_grid(phi_d[:1], rel)
    for r, lam in zip(rel, lams1):
        taus[f"trak_m1_rel{r:g}"] = trak_scores(phi_d[:1], phi_q[:1], lam)
    report["lambda_abs"] = dict(zip([f"{r:g}" for r in rel], lams))
    np.savez(p.cache_dir() / "baselines-tau.npz", **taus)
    report["lds"] = evaluate(taus, gt, genre, N_GENRES)
    out = a.out or str(p.cache_dir() / "baselines-report.json")
    with open(out, "w") as f:
        json.dump(report, f, indent=1, default=float)
    print(json.dumps(report["timing"], default=float))
    print(f"wrote {out}")
    return 0


def evaluate_one(tau: np.ndarray, gt, genre: np.ndarray, n_genres: int = 15) -> dict[str, float]:
    """LDS of one ``tau (m, 450)`` at the levels the ground truth has:
    ``document``, ``genre`` (sums over each genre) and ``genre_centred``."""
    row = {}
    if len(gt.doc_targets) >= 2:
        row["document"] = lds(tau, gt.doc_subsets, gt.doc_targets)
    if len(gt.genre_targets) >= 2:
        tg = to_sources(tau, genre, n_genres)
        row["genre"] = lds(tg, gt.genre_subsets, gt.genre_targets)
        row["genre_centred"] = lds(tg, gt.genre_subsets, gt.genre_targets, centred=True)
    return row


def evaluate(taus: dict[str, np.ndarray], gt, genre: np.ndarray, n_genres: int = 15) -> dict:
    """LDS of every baseline on what the ground truth has; prints a table."""

    rows = {}
    print(f"LDS on {len(gt.doc_targets)} document subsets, {len(gt.genre_targets)} genre subsets")
    for name, tau in taus.items():
        rows[name] = row = evaluate_one(tau, gt, genre, n_genres)
        print(f"{name:18s} " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    return rows


def per_query_timing(model: GPT, qx: torch.Tensor, G: torch.Tensor, phi_d: torch.Tensor, proj, member: int,
                     lam_rel: float = 1e-2) -> dict:
    """Side by side, one query at a time, one member: grad-dot (backward + dot
    with the (n, p) gradient matrix) and TRAK (backward + projection with the
    resident matrix + product with the finalised (n, k) features); also TRAK
    folded: ``P (Phi (Phi^T Phi + lam I)^-1)^T / sqrt(p)`` precomputed as one
    ``(p, n)`` matrix, so a query costs a backward pass and one product, as
    grad-dot does (same scores up to float32 rounding)."""
    from trak.score_computers import BasicScoreComputer

    lam = lam_grid([phi_d], [lam_rel])[0]
    sc = BasicScoreComputer(dtype=torch.float32, device="cpu", lambda_reg=lam, logging_level=40)
    t = time.perf_counter()
    feats = sc.get_x_xtx_inv(phi_d, sc.get_xtx(phi_d))
    inv_s = time.perf_counter() - t
    params = dict(model.named_parameters())
    names = list(params)
    t = time.perf_counter()
    folded = (proj.proj_matrix @ feats.T) / math.sqrt(G.shape[1])  # (p, n): TRAK folded into one matrix
    fold_s = time.perf_counter() - t
    bwd, dot, prj, prod, fdot, err = [], [], [], [], [], []
    for x in qx:
        t = time.perf_counter()
        model.zero_grad(set_to_none=True)
        sequence_logprob(model, x.unsqueeze(0))[0].backward()
        g = torch.cat([params[k].grad.reshape(-1) for k in names]).unsqueeze(0)
        t1 = time.perf_counter()
        _ = g @ G.T
        t2 = time.perf_counter()
        phi = proj.project(g, model_id=member) / math.sqrt(g.shape[1])
        t3 = time.perf_counter()
        s_trak = phi @ feats.T
        t4 = time.perf_counter()
        s_fold = g @ folded
        t5 = time.perf_counter()
        fdot.append(t5 - t4)
        err.append(float((s_fold - s_trak).abs().max() / s_trak.abs().max()))
        bwd.append(t1 - t)
        dot.append(t2 - t1)
        prj.append(t3 - t2)
        prod.append(t4 - t3)
    return {"n": len(qx), "trak_xtx_inverse_features_s": inv_s, "backward_s": float(np.median(bwd)),
            "graddot_dot_s": float(np.median(dot)), "trak_project_s": float(np.median(prj)),
            "trak_product_s": float(np.median(prod)),
            "graddot_per_query_s": float(np.median(bwd) + np.median(dot)),
            "trak_per_query_s": float(np.median(bwd) + np.median(prj) + np.median(prod)),
            "trak_fold_precompute_s": fold_s, "trak_folded_dot_s": float(np.median(fdot)),
            "trak_folded_per_query_s": float(np.median(bwd) + np.median(fdot)),
            "trak_folded_max_rel_err": float(max(err))}


if __name__ == "__main__":
    sys.exit(main())
