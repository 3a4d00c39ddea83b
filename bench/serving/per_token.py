"""``python -m bench.serving.per_token``: what per-token answers cost beside
sequence-only ones on a text store, side by side (issue 27).

The same queries (held-out Brown windows of ``bench.serving.load_text``: raw text,
at most ``--tokens`` tokens each) are read out as the service reads them
(``influence.blocks.text_readout_rows``: blocks of ``--block`` rows, each
row padded to its length bucket), with ``per_token`` off and on, the two
interleaved round by round (``bench.harness.common.side_by_side``, medians); for
``granularity`` sources (the store's per-source rows) and both (documents
too). The per-token variant also builds the answers' per-token part
(``service.per_token.token_answer``: top ``--token-top-k`` sources per
token and the spans), which is included in its time. Reported: seconds per
block of each and their ratio (the issue's goal: within 10%).

It also checks that per_token leaves the sequence's numbers as they are:
f, the token log-probabilities and the source (and document) scores
bit-identical on and off, and the mean of the per-token source scores
equal to the sequence's (largest |difference| over the largest |τ|).

``--store`` may be given more than once (default: ``stores/brown-ft``, the
LoRA store the issue names, and ``stores/brown``, the protocol GPT, whose
trained tied embedding makes the per-token part of the output layer's term
cost one ``(B T, V) x (V, d)`` product per stored row: as much again as the
trunk's tangents there). Writes ``bench/results/per_token.json`` (``runs``:
one per store) and, with ``--write-md``, the "Per-token answers" section
of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys

import torch

from bench.harness.common import ROOT, machine, write_json
from bench.harness.timing import side_by_side

STORES = [ROOT / "stores" / "brown-ft", ROOT / "stores" / "brown"]


def run(args, root) -> dict:
    from bench.serving.load_text import passages
    from influence.blocks import text_readout_rows
    from influence.store import open_store
    from influence.text.attributor import TextAttributor
    from service.per_token import token_answer

    if args.threads:
        torch.set_num_threads(args.threads)
    store = open_store(root)
    att = TextAttributor(store, args.device)
    man = store.manifest
    ids = man.source_ids
    names = man.extra.get("source_names") or ids
    qs = [att.encode(text=t) for t in passages(att.tokenizer, args.queries, args.tokens)]
    n_tok = sum(q.n_targets for q in qs)
    out = {"store": {"root": str(root), "version": man.version, "kind": man.model.kind,
                     "sources": len(ids), "documents": len(man.example_source),
                     "tangents_sources_only": att.tangents(False), "tangents_with_documents": att.tangents(True)},
           "queries": len(qs), "scored_tokens": n_tok, "block": args.block, "token_top_k": args.token_top_k,
           "device": str(att.device), "granularities": {}}
    out["store"]["per_source_rows"] = att.source_rows is not None
    # without per-source rows the sources are the documents' sums: "both" reads the same rows (not repeated)
    grans = (("sources", False), ("both", True)) if att.source_rows is not None else (("sources", False),)
    for gran, examples in grans:
        seq = text_readout_rows(att, qs, args.block, examples)
        per = text_readout_rows(att, qs, args.block, examples, per_token=True)
        same = all(torch.equal(a, b) for a, b in ((seq[0], per[0]), (seq[2], per[2]))) and seq[1] == per[1] and \
            (seq[3] is None or torch.equal(seq[3], per[3]))
        mean = torch.stack([t.double().mean(0) for t in per[4]])
        rel = float(((mean - seq[2].double()).abs().amax(1) / seq[2].double().abs().amax(1)).max())

        def sequence(examples=examples):  # (results come back to the CPU: the device is waited for)
            text_readout_rows(att, qs, args.block, examples)

        def per_token(examples=examples):
            r = text_readout_rows(att, qs, args.block, examples, per_token=True)
            for q, t, lp in zip(qs, r[4], r[1], strict=True):
                token_answer(q, t, lp, ids, names, args.token_top_k, "positive")

        t = side_by_side({"sequence": sequence, "per_token": per_token}, rounds=args.rounds, min_s=0.0)
        blocks = -(-len(qs) // args.block)
        out["granularities"][gran] = {
            "sequence_s_per_block": t["sequence"] / blocks, "per_token_s_per_block": t["per_token"] / blocks,
            "ratio": t["per_token"] / t["sequence"], "sequence_numbers_bit_identical": bool(same),
            "mean_of_token_scores_rel_err": rel}
        print(f"{root} {gran}: sequence {t['sequence'] / blocks * 1e3:.1f} ms/block, per_token "
              f"{t['per_token'] / blocks * 1e3:.1f} ms/block, ratio {t['per_token'] / t['sequence']:.3f}; "
              f"bit-identical {same}; mean rel err {rel:.2e}", file=sys.stderr)
    out["machine"] = machine()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", action="append", help="a text store (repeatable; default: brown-ft and brown)")
    p.add_argument("--queries", type=int, default=32)
    p.add_argument("--tokens", type=int, default=64, help="tokens per query at most")
    p.add_argument("--block", type=int, default=4, help="rows per readout call (text_readout_block)")
    p.add_argument("--token-top-k", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--write-md", action="store_true")
    a = p.parse_args(argv)
    stores = a.store or [str(x) for x in STORES]
    r = {"command": "python -m bench.serving.per_token " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:])),
         "tokens": a.tokens, "runs": [run(a, root) for root in stores]}
    path = write_json("per_token.json", r)
    print(f"wrote {path}")
    if a.write_md:
        from bench.serving import reports

        reports.main(["per_token", "--json", str(path)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
