"""A tree over the stored rows and a beam readout whose cost follows what it
returns (issue 25), for every model kind: the tree knows rows only by index,
the readout only through a ``read(nodes) -> τ`` callback.

Levels: sources (the roots) -> clusters of a source's documents, nested
``branching`` wide -> documents (the leaves). Documents are laid out in
depth-first order (``order``), so every node covers one contiguous range
``order[start:end]`` and its response is the exact sum of its documents'
(first order is linear, so ``τ(q, node) = Σ τ(q, child)`` to rounding).

Clusters: spherical k-means on a random Gaussian sketch of the rows (cosine
of the sketches ~ cosine of the responses), so documents that move the
parameters the same way share a node, and a query that one of them helps
finds it by its ancestors' |τ|. Costs: building is O(n·p·k) for the sketch
plus O(n·k·b·iters·depth) for the clustering; the tree holds
about ``n / (b - 1)`` inner nodes beside the ``n`` documents."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class RowTree:
    """Nodes ``0..N-1``: roots (one per source) first, documents last.

    order ``(n,)`` documents in depth-first order; start, end ``(N,)`` each
    node's range in ``order``; parent ``(N,)`` (-1 for a root); depth ``(N,)``
    (0 for a root); doc ``(N,)`` the document of a leaf, -1 for inner nodes;
    source ``(N,)`` the source a node belongs to. ``children[i]`` the node ids
    under node ``i`` (empty for a leaf)."""

    order: torch.Tensor
    start: torch.Tensor
    end: torch.Tensor
    parent: torch.Tensor
    depth: torch.Tensor
    doc: torch.Tensor
    source: torch.Tensor
    children: list[list[int]]

    @property
    def n_nodes(self) -> int:
        return int(self.start.numel())

    @property
    def roots(self) -> list[int]:
        return (self.parent < 0).nonzero().flatten().tolist()

    @property
    def inner(self) -> torch.Tensor:
        """Ids of the nodes that are not documents (their rows are stored beside the documents')."""
        return (self.doc < 0).nonzero().flatten()

    def size(self, node: int) -> int:
        return int(self.end[node] - self.start[node])

    def docs(self, node: int) -> torch.Tensor:
        return self.order[int(self.start[node]):int(self.end[node])]

    def to_dict(self) -> dict:
        """JSON-able form (the store's manifest or asset)."""
        return {"order": self.order.tolist(), "start": self.start.tolist(), "end": self.end.tolist(),
                "parent": self.parent.tolist(), "depth": self.depth.tolist(), "doc": self.doc.tolist(),
                "source": self.source.tolist(), "children": self.children}

    @classmethod
    def from_dict(cls, d: dict) -> RowTree:
        t = {k: torch.tensor(d[k], dtype=torch.long) for k in ("order", "start", "end", "parent", "depth", "doc",
                                                              "source")}
        return cls(**t, children=[list(c) for c in d["children"]])


def sketch(rows: torch.Tensor, k: int = 64, seed: int = 0) -> torch.Tensor:
    """``(n, p)`` rows -> ``(n, k)`` Gaussian sketch ``rows @ G / sqrt(k)``
    (float32; inner products kept in expectation)."""
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(rows.shape[1], k, generator=g) / k ** 0.5
    return rows.float() @ G.to(rows.device)


def spherical_kmeans(z: torch.Tensor, b: int, seed: int, iters: int = 20) -> torch.Tensor:
    """Cluster labels ``(m,)`` in ``[0, b)`` of unit rows ``z (m, k)``; every
    label used (an empty cluster takes the point farthest from its centre)."""
    m = z.shape[0]
    g = torch.Generator().manual_seed(seed)
    centres = z[torch.randperm(m, generator=g)[:b]].clone()
    labels = torch.zeros(m, dtype=torch.long)
    for _ in range(iters):
        sim = z @ centres.T
        new = sim.argmax(1)
        for c in range(b):  # refill empty clusters so that the split always makes progress
            if not (new == c).any():
                worst = sim.gather(1, new[:, None])[:, 0].argmin()
                new[worst] = c
        if torch.equal(new, labels):
            break
        labels = new
        for c in range(b):
            v = z[labels == c].sum(0)
            centres[c] = v / v.norm().clamp_min(1e-12)
    return labels


def build_tree(doc_source: torch.Tensor, n_sources: int, sketch_rows: torch.Tensor, branching: int = 8,
               max_depth: int = 6, seed: int = 0) -> RowTree:
    """The tree of ``n`` documents ``doc_source (n,)`` in ``[0, n_sources)``:
    each source a root; a node of more than ``branching`` documents is split
    into ``branching`` clusters of ``sketch_rows (n, k)`` (cosine k-means),
    until ``max_depth`` levels of clusters, then its documents are its
    children. A source with no document is a root with no children."""
    if branching < 2:
        raise ValueError("branching: at least 2")
    z = sketch_rows.float()
    z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
    nodes: list[dict] = []
    order: list[int] = []

    def add(parent: int, depth: int, src: int, doc: int = -1) -> int:
        nodes.append({"parent": parent, "depth": depth, "source": src, "doc": doc, "start": len(order),
                      "children": []})
        if parent >= 0:
            nodes[parent]["children"].append(len(nodes) - 1)
        return len(nodes) - 1

    def grow(node: int, docs: torch.Tensor, depth: int, src: int) -> None:
        if docs.numel() <= branching or depth >= max_depth:
            for d in docs.tolist():
                add(node, depth + 1, src, d)
                order.append(d)
        else:
            labels = spherical_kmeans(z[docs], branching, seed + node)
            for c in range(branching):
                part = docs[labels == c]
                if part.numel() == docs.numel():  # identical sketches: no split found, cut evenly instead
                    return _even(node, docs, depth, src)
                if part.numel():
                    grow(add(node, depth + 1, src), part, depth + 1, src)
        nodes[node]["end"] = len(order)

    def _even(node: int, docs: torch.Tensor, depth: int, src: int) -> None:
        for part in docs.tensor_split(branching):
            if part.numel():
                grow(add(node, depth + 1, src), part, depth + 1, src)
        nodes[node]["end"] = len(order)

    roots = [add(-1, 0, s) for s in range(n_sources)]
    for s, r in enumerate(roots):
        nodes[r]["start"] = len(order)
        grow(r, (doc_source == s).nonzero().flatten(), 0, s)
    for nd in nodes:
        nd.setdefault("end", nd["start"] + (1 if nd["doc"] >= 0 else 0))
    return _renumber(nodes, order)


def _renumber(nodes: list[dict], order: list[int]) -> RowTree:
    """Roots first, then inner nodes, documents last (breadth-first within each group)."""
    ids = sorted(range(len(nodes)), key=lambda i: (nodes[i]["doc"] >= 0, nodes[i]["parent"] >= 0, nodes[i]["depth"],
                                                   i))
    new = {old: k for k, old in enumerate(ids)}
    col = lambda key: torch.tensor([nodes[i][key] for i in ids], dtype=torch.long)  # noqa: E731
    parent = torch.tensor([new[nodes[i]["parent"]] if nodes[i]["parent"] >= 0 else -1 for i in ids])
    return RowTree(torch.tensor(order, dtype=torch.long), col("start"), col("end"), parent, col("depth"), col("doc"),
                   col("source"), [[new[c] for c in nodes[i]["children"]] for i in ids])


def node_rows(tree: RowTree, rows: torch.Tensor, nodes: torch.Tensor | None = None) -> torch.Tensor:
    """Responses of ``nodes`` (default: the inner ones), each the sum of its
    documents' ``rows (n, ...)``, accumulated in float64: ``(len(nodes), ...)``
    in ``rows``' dtype. A node with no document is a zero row."""
    nodes = tree.inner if nodes is None else nodes
    out = torch.zeros((len(nodes), *rows.shape[1:]), dtype=torch.float64, device=rows.device)
    for i, nd in enumerate(nodes.tolist()):
        docs = tree.docs(nd)
        if docs.numel():
            out[i] = rows[docs.to(rows.device)].double().sum(0)
    return out.to(rows.dtype)


@dataclass
class BeamAnswer:
    """A beam readout of ``Q`` queries over a tree of ``N`` nodes.

    tau ``(Q, N)``: exact τ where ``read`` is True; documents ``(Q, n)``: τ of
    every document, exact where ``exact`` is True, else its deepest read
    ancestor's τ spread evenly over that ancestor's documents; rows_read
    ``(Q,)`` nodes each query read; cut_levels: per query, the depths at
    which the beam left read nodes unexpanded."""

    tau: torch.Tensor
    read: torch.Tensor
    documents: torch.Tensor
    exact: torch.Tensor
    rows_read: torch.Tensor
    cut_levels: list[list[int]]


def beam_read(tree: RowTree, read: Callable[[list[int]], torch.Tensor], n_queries: int, width: int) -> BeamAnswer:
    """Read every root, then level by level expand, per query, the ``width``
    read inner nodes of the current depth with the largest |τ|, down to the
    documents. ``read(nodes)`` returns exact ``τ (Q, len(nodes))`` for all
    queries; each query keeps only the nodes of its own beam, so its answer
    does not depend on the other queries of the batch. Cost: ``S + Q·width·b``
    rows per level instead of ``n``."""
    N, Q = tree.n_nodes, n_queries
    tau = torch.zeros(Q, N, dtype=torch.float64)
    got = torch.zeros(Q, N, dtype=torch.bool)
    roots = tree.roots
    tau[:, roots] = read(roots).double().cpu()
    got[:, roots] = True
    frontier = [list(roots) for _ in range(Q)]
    cut: list[list[int]] = [[] for _ in range(Q)]
    depth = 0
    while any(frontier):
        chosen = []
        for q in range(Q):
            cand = [nd for nd in frontier[q] if tree.children[nd]]
            cand.sort(key=lambda nd, q=q: -abs(float(tau[q, nd])))
            chosen.append(cand[:width])
            if len(cand) > width:
                cut[q].append(depth)
        want = sorted({c for cs in chosen for nd in cs for c in tree.children[nd]})
        if not want:
            break
        t = read(want).double().cpu()
        col = {nd: j for j, nd in enumerate(want)}
        for q in range(Q):
            kids = [c for nd in chosen[q] for c in tree.children[nd]]
            if kids:
                idx = torch.tensor(kids)
                tau[q, idx] = t[q, torch.tensor([col[c] for c in kids])]
                got[q, idx] = True
            frontier[q] = kids
        depth += 1
    docs, exact = spread(tree, tau, got)
    return BeamAnswer(tau, got, docs, exact, got.sum(1), cut)


def spread(tree: RowTree, tau: torch.Tensor, got: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-document τ ``(Q, n)`` from node scores: a read document's own τ,
    else its deepest read ancestor's τ divided by that ancestor's document
    count. Returns (documents, exact)."""
    Q, n = tau.shape[0], int(tree.order.numel())
    out = torch.zeros(Q, n, dtype=tau.dtype)
    exact = torch.zeros(Q, n, dtype=torch.bool)
    leaf = tree.doc >= 0
    by_depth = sorted(range(tree.n_nodes), key=lambda i: int(tree.depth[i]))
    for nd in by_depth:  # shallow to deep: deeper read nodes overwrite their ancestors' share
        docs = tree.docs(nd)
        if not docs.numel():
            continue
        rows = got[:, nd]
        if rows.any():
            share = tau[rows, nd] / docs.numel()
            out[rows.nonzero().flatten()[:, None], docs[None, :]] = share[:, None].expand(-1, docs.numel())
            if leaf[nd]:
                exact[rows, int(tree.doc[nd])] = True
    return out, exact
