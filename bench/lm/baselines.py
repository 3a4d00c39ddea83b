"""Baselines of the language-model benchmark (``docs/lm-protocol.md``) and
their LDS table. Every baseline gives ``tau (m queries, n documents)`` with the
protocol's sign (``tau > 0``: including document ``i`` raises ``f(q)``);
genre scores ``(m, 15)`` are sums over each genre's documents
(``bench.harness.metrics``, which also defines the LDS).

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
- **TRAK** (``bench.harness.trak``: traker's own projector and score
  computer): per member, ``phi = P^T g / sqrt(p)`` for the model
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

    python -m bench.lm.baselines [--members 5] [--k 2048] [--lambdas 1e-3,1e-2,...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from bench.harness.metrics import levels
from bench.harness.trak import lam_grid, projector, trak_features, trak_scores
from influence.gpt.model import GPT
from influence.text.causal import sequence_logprob, token_logprobs

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


# ---------------------------------------------------------------------------
# The benchmark on the Brown ground truth


def main(argv: list[str] | None = None) -> int:
    from bench.harness import truth
    from bench.lm.groundtruth import load_full_params, n_full_available
    from bench.lm.protocol import DEFAULT, N_GENRES, SPEC, corpus, doc_genre, queries

    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--k", type=int, default=2048)
    ap.add_argument("--lambdas", default="1e-4,1e-2,1,10,100,1e3", help="relative to the mean eigenvalue of Phi^T Phi")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="json report path (default: the cache directory)")
    ap.add_argument("--from-cache", action="store_true",
                    help="only recompute the LDS of the cached scores (baselines-tau.npz) on the current ground truth")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    p = DEFAULT
    c = corpus()
    qx = queries(p)
    gt = truth.load(p)
    q_genre = c.heldout_doc_source["genre"][c.queries(p.n_queries, p.query_seed)[1]]
    if a.from_cache:
        z = np.load(p.truth_dir() / "baselines-tau.npz")
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
    tm = {"doc_grads_s": [], "query_grads_s": [], "proj_gen_s": [], "proj_docs_s": []}
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
        del proj
        print(f"member {e}: doc grads {tm['doc_grads_s'][-1]:.1f} s, query grads {tm['query_grads_s'][-1]:.1f} s, "
              f"projector {tm['proj_gen_s'][-1]:.1f} s, project docs {tm['proj_docs_s'][-1]:.1f} s", flush=True)
    report["timing"].update(tm)
    taus["grad_dot"] = grad_dot(qg, dg)
    taus["grad_dot_m1"] = grad_dot(qg[:1], dg[:1])
    del dg

    np.savez(p.truth_dir() / "baselines-phi.npz", k=a.k, **{f"phi_d{e}": f.numpy() for e, f in enumerate(phi_d)},
             **{f"phi_q{e}": f.numpy() for e, f in enumerate(phi_q)})
    rel = [float(x) for x in a.lambdas.split(",")]
    lams = lam_grid(phi_d, rel)
    t = time.perf_counter()
    for r, lam in zip(rel, lams):
        taus[f"trak_rel{r:g}"] = trak_scores(phi_d, phi_q, lam)
    report["timing"]["trak_inverse_and_scores_per_lambda_s"] = (time.perf_counter() - t) / len(rel)
    lams1 = lam_grid(phi_d[:1], rel)
    for r, lam in zip(rel, lams1):
        taus[f"trak_m1_rel{r:g}"] = trak_scores(phi_d[:1], phi_q[:1], lam)
    report["lambda_abs"] = dict(zip([f"{r:g}" for r in rel], lams))
    np.savez(p.truth_dir() / "baselines-tau.npz", **taus)
    report["lds"] = evaluate(taus, gt, genre, N_GENRES)
    out = a.out or str(p.truth_dir() / "baselines-report.json")
    with open(out, "w") as f:
        json.dump(report, f, indent=1, default=float)
    print(json.dumps(report["timing"], default=float))
    print(f"wrote {out}")
    return 0


def evaluate(taus: dict[str, np.ndarray], gt, genre: np.ndarray, n_genres: int = 15) -> dict:
    """LDS of every baseline on what the ground truth has; prints a table."""

    rows = {}
    print(f"LDS on {len(gt.doc_targets)} document subsets, {len(gt.genre_targets)} genre subsets")
    for name, tau in taus.items():
        rows[name] = row = levels(tau, gt, genre, n_genres)
        print(f"{name:18s} " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
