"""The tree over stored rows and the beam readout (issue 25): structure,
node rows = sums of their documents' (exact through the real readouts:
τ(q, node) = Σ τ(q, child), float64), a beam as wide as the tree = the full
readout, a narrow one exact where it reads and mass-preserving where it
spreads, batch = one query at a time."""

from __future__ import annotations

import pytest
import torch

from influence.hierarchy import RowTree, beam_read, build_tree, node_rows, sketch
from influence.mlp.model import MLPSpec, init_params
from influence.mlp.readout import linear_stack_scores, split_layers


def _corpus(n=90, S=4, p=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, S, (n,), generator=g)
    src[:S] = torch.arange(S)  # every source has a document
    centres = torch.randn(6, p, generator=g, dtype=torch.float64)
    rows = centres[torch.randint(0, 6, (n,), generator=g)] + 0.3 * torch.randn(n, p, generator=g,
                                                                                 dtype=torch.float64)
    return src, S, rows


def _tree(src, S, rows, b=3, depth=6):
    return build_tree(src, S + 1, sketch(rows, 16), branching=b, max_depth=depth)  # source S: no documents


def test_tree_structure():
    src, S, rows = _corpus()
    t = _tree(src, S, rows)
    n = rows.shape[0]
    assert sorted(t.order.tolist()) == list(range(n))
    assert t.roots == list(range(S + 1)) and t.size(S) == 0 and not t.children[S]
    for s in range(S):
        assert sorted(t.docs(s).tolist()) == (src == s).nonzero().flatten().tolist()
    for nd in range(t.n_nodes):
        kids = t.children[nd]
        if kids:
            assert len(kids) <= 3 and sum(t.size(c) for c in kids) == t.size(nd)
            assert sorted(torch.cat([t.docs(c) for c in kids]).tolist()) == sorted(t.docs(nd).tolist())
            assert all(int(t.parent[c]) == nd and int(t.depth[c]) == int(t.depth[nd]) + 1 for c in kids)
        else:
            assert (t.doc[nd] >= 0) == (t.size(nd) == 1)
    leaves = (t.doc >= 0).nonzero().flatten()
    assert leaves.numel() == n and int(leaves.min()) == t.n_nodes - n  # documents last
    assert RowTree.from_dict(t.to_dict()).to_dict() == t.to_dict()


def test_node_rows_are_children_sums_through_the_mlp_readout():
    spec = MLPSpec(widths=[5, 7, 6, 4], activation="tanh")
    params = init_params(spec, seed=2, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    src = torch.randint(0, 3, (40,), generator=g)
    U = torch.randn(40, spec.layout().numel, generator=g, dtype=torch.float64)
    t = build_tree(src, 3, sketch(U, 8), branching=3)
    inner = node_rows(t, U)
    all_rows = torch.cat([inner, U[t.doc[t.doc >= 0]]])  # node ids: inner first, then leaves in id order
    x, y = torch.randn(5, 5, dtype=torch.float64), torch.randint(0, 4, (5,))
    tau = linear_stack_scores(params, spec, split_layers(all_rows, spec), x, y, "margin")
    for nd in range(t.n_nodes):
        if t.children[nd]:
            torch.testing.assert_close(tau[:, nd], tau[:, t.children[nd]].sum(1), rtol=1e-10, atol=1e-10)


def _linear_reader(t, rows, G):
    """τ(q, node) = <g_q, row(node)>: the readout's linearity, without a model."""
    full = torch.zeros(t.n_nodes, rows.shape[1], dtype=torch.float64)
    full[t.inner] = node_rows(t, rows)
    leaves = (t.doc >= 0).nonzero().flatten()
    full[leaves] = rows[t.doc[leaves]]
    calls = []

    def read(nodes):
        calls.append(len(nodes))
        return G @ full[nodes].T

    return read, calls


@pytest.mark.parametrize("b", [2, 3, 5])
def test_a_beam_as_wide_as_the_tree_is_the_full_readout(b):
    src, S, rows = _corpus()
    t = _tree(src, S, rows, b)
    G = torch.randn(4, rows.shape[1], dtype=torch.float64)
    read, _ = _linear_reader(t, rows, G)
    ans = beam_read(t, read, 4, width=t.n_nodes)
    assert ans.exact.all() and (ans.rows_read == t.n_nodes).all() and not any(ans.cut_levels)
    torch.testing.assert_close(ans.documents, G @ rows.T, rtol=1e-12, atol=1e-12)


def test_a_narrow_beam_is_exact_where_it_reads_and_keeps_each_source_total():
    src, S, rows = _corpus(n=200)
    t = _tree(src, S, rows, b=3)
    G = torch.randn(6, rows.shape[1], dtype=torch.float64)
    read, calls = _linear_reader(t, rows, G)
    ans = beam_read(t, read, 6, width=1)
    full = G @ rows.T
    assert (ans.rows_read < t.n_nodes // 2).all() and all(ans.cut_levels)
    assert ans.exact.any(1).all()
    torch.testing.assert_close(ans.documents[ans.exact], full[ans.exact], rtol=1e-12, atol=1e-12)
    # spreading an unread node's τ over its documents keeps every source's total: credit stays exact
    for s in range(S):
        torch.testing.assert_close(ans.documents[:, src == s].sum(1), full[:, src == s].sum(1), rtol=1e-9,
                                   atol=1e-9)
    # the beam follows |τ|: each query's first expanded root is its largest source
    roots = torch.tensor(t.roots)
    for q in range(6):
        top = int(roots[ans.tau[q, roots].abs().argmax()])
        assert ans.read[q, t.children[top]].all()


def test_a_query_in_a_batch_gets_what_it_gets_alone():
    src, S, rows = _corpus(n=150)
    t = _tree(src, S, rows, b=4)
    G = torch.randn(5, rows.shape[1], dtype=torch.float64)
    read, _ = _linear_reader(t, rows, G)
    batch = beam_read(t, read, 5, width=2)
    for q in range(5):
        one, _ = _linear_reader(t, rows, G[q:q + 1])
        alone = beam_read(t, one, 1, width=2)
        assert torch.equal(alone.read[0], batch.read[q])  # the same beam, whatever else is in the batch
        # (the numbers to the GEMM's rounding here; the service's fixed-shape blocks make them bit-identical)
        torch.testing.assert_close(alone.documents[0], batch.documents[q], rtol=1e-12, atol=1e-12)
