"""Report writing, shared by every family's report module: a section of BENCHMARKS.md replaced in
place, number formatting, markdown tables, and recorded commands quoted with today's module names.
Reports read results JSON and write text and figures; they measure nothing."""

from __future__ import annotations

import re
from pathlib import Path

from bench.harness.common import BENCHMARKS

SECTION_ORDER = ("Readout speed", "Serving speed", "Serving speed: text store", "Reliability")


def write_section(heading: str, body: str, path: Path = BENCHMARKS) -> None:
    """Replace the ``## heading`` section of ``path`` (up to the next ``## ``)
    with ``body``, or add it before the first present section that comes
    after it in ``SECTION_ORDER`` (else at the end). The file is read right
    before writing: other sections, written by other benchmarks, are kept
    as they are."""
    title = f"## {heading}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{title}\n\n{body.strip()}\n\n"
    pattern = re.compile(rf"^{re.escape(title)}[ \t]*\n.*?(?=^## |\Z)", re.S | re.M)
    later = SECTION_ORDER[SECTION_ORDER.index(heading) + 1:] if heading in SECTION_ORDER else ()
    marks = [m for h in later if (m := re.search(rf"^## {re.escape(h)}[ \t]*$", text, re.M))]
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    elif marks:
        at = min(m.start() for m in marks)
        text = text[:at] + block + text[at:]
    else:
        text = text.rstrip() + "\n\n" + block
    path.write_text(text.rstrip() + "\n")


def fmt(x: float | None, nd: int = 3) -> str:
    if x is None:
        return "–"
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{nd}g}"


def table(head: list[str], rows: list[list], align: str = "---") -> list[str]:
    """Markdown lines of a table: ``head``, then one line per row (``None`` as "–", floats by ``fmt``)."""
    cell = lambda v: "–" if v is None else fmt(v) if isinstance(v, float) else str(v)  # noqa: E731
    return ["| " + " | ".join(head) + " |", "|" + f"{align}|" * len(head)] + \
        ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]


def write_marked(mark: str, body: str, path: Path = BENCHMARKS) -> None:
    """Replace the text between two ``mark`` lines (``body`` carries both), else append it: a block
    inside a hand-written section."""
    text = path.read_text()
    block = re.compile(re.escape(mark) + ".*?" + re.escape(mark), re.S)
    text = block.sub(lambda _: body, text) if block.search(text) else text.rstrip() + "\n\n" + body + "\n"
    path.write_text(text)


RENAMED = {  # module before bench was split by family -> where it lives now (issue 29)
    "common": "harness.common", "protocol": "digits.protocol", "groundtruth": "digits.groundtruth",
    "metrics": "digits.metrics", "ours": "digits.ours", "trak_baseline": "digits.trak", "quality": "digits.quality",
    "report": "digits.quality_report", "precompute": "digits.precompute",
    "precompute_report": "digits.precompute_report", "worker_step": "digits.worker_step",
    "first_answer": "digits.first_answer", "source_groundtruth": "sources.groundtruth",
    "source_quality": "sources.quality", "source_report": "sources.report", "source_sweep": "sources.sweep",
    "lm_source_quality": "sources.lm_quality", "lm_protocol": "lm.protocol", "lm_groundtruth": "lm.groundtruth",
    "lm_baselines": "lm.baselines", "lm_ours": "lm.ours", "lm_quality": "lm.quality", "lm_quality_report": "lm.report",
    "lm_store": "lm.store", "lm_timing": "lm.timing", "ft_protocol": "ft.protocol", "ft_groundtruth": "ft.groundtruth",
    "ft_baselines": "ft.baselines", "ft_lexical": "ft.lexical", "ft_ours": "ft.ours", "ft_quality": "ft.quality",
    "ft_report": "ft.report", "ft_cost": "ft.cost", "ft_curvature": "ft.curvature", "ft_store": "ft.store",
    "load": "serving.load", "load_text": "serving.load_text", "load_text_report": "serving.load_text_report",
    "load_procs": "serving.procs", "ab_report": "serving.reports ab", "reliability": "serving.reliability",
    "startup": "serving.startup", "per_token": "serving.per_token", "text_precision": "serving.precision",
    "readout": "serving.readout", "gpu_parts": "gpu.parts", "gpu_stores": "gpu.stores", "gpu_check": "gpu.check",
    "gpu_scale": "gpu.scale", "gpu_report": "gpu.report",
}
"""``bench.gpu_suite`` and ``bench.hostile`` keep their names (entry files at the root)."""
_OLD = re.compile(r"\bbench\.(" + "|".join(sorted(RENAMED, key=len, reverse=True)) + r")\b")


def current(command: str) -> str:
    """A recorded command (results JSON) with today's module names, as the reports quote it: every
    command BENCHMARKS.md quotes must run as written."""
    return _OLD.sub(lambda m: f"bench.{RENAMED[m.group(1)]}", command)


def render_main(prog: str, doc: str, heading: str, render, json_name: str, argv: list[str] | None = None,
                figure=None, write=None) -> int:
    """A report module's command line: read ``--json`` (default ``bench/results/<json_name>``), draw
    ``figure(res, png)`` beside it where the report has one, and write the ``heading`` section of
    BENCHMARKS.md with ``render(res)`` (or ``write(body)`` it; ``--print``: print it instead;
    ``--no-md``: neither)."""
    import argparse
    import json

    from bench.harness.common import RESULTS

    ap = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    ap.add_argument("--json", type=Path, default=RESULTS / json_name)
    ap.add_argument("--print", action="store_true", help="print the section instead of writing BENCHMARKS.md")
    ap.add_argument("--no-md", action="store_true", help="only the figure")
    a = ap.parse_args(argv)
    res = json.loads(a.json.read_text())
    if figure is not None:
        figure(res, a.json.with_suffix(".png"))
    if not a.no_md:
        body = render(res)
        if a.print:
            print(body)
        else:
            (write or (lambda b: write_section(heading, b)))(body)
    return 0


def pick(rows: list[dict], **fields) -> dict | None:
    """The first row whose ``fields`` equal the given values (``None`` if there is none)."""
    return next((r for r in rows if all(r.get(k) == v for k, v in fields.items())), None)


def fixed(x, nd: int = 3) -> str:
    """``x`` with ``nd`` decimals; "–" for a missing or NaN value."""
    return "–" if x is None or (isinstance(x, float) and x != x) else f"{x:.{nd}f}"


def head(cells: list[str]) -> list[str]:
    """The first two lines of a markdown table: ``| a | b |`` and ``| --- | --- |``."""
    return ["| " + " | ".join(cells) + " |", "| " + " | ".join("---" for _ in cells) + " |"]


def pyplot():
    """matplotlib's pyplot on the Agg backend (figures are files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path, dpi: int = 110) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)


def log2_x(axes, xlabel: str) -> None:
    """Every axis: a base-2 log x scale (batch sizes, concurrencies), its label, a light grid."""
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
