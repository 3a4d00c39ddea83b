"""Scale-out: two service replicas (separate processes and data dirs) share
one Redis, one key prefix and one store. Queries go to both, with and
without idempotency keys (the same key to both replicas, one after the
other and at the same time); the aggregates and the compensation report
must then add up exactly, and read the same from either replica."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx

from influence.datasets.vectors import load_digits_test
from service.credit import credit

from ..service.util import REDIS_URL, wait_ready

REPO = Path(__file__).resolve().parents[2]
QUERY, REPORT = "scale-query-key", "scale-report-key"
UNITS = 1_000_000


@contextmanager
def replica(store: Path, data_dir: Path, prefix: str, log: Path):
    """``python -m service`` in its own process on a free loopback port; yields its base URL."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE", "FA_TORCH_THREADS": "1",
           "FA_REDIS_PREFIX": prefix, "FA_QUERY_KEYS": QUERY, "FA_REPORT_KEYS": REPORT, "FA_MAX_WAIT_MS": "1",
           "FA_CREDIT_UNITS": str(UNITS)}
    cmd = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", "0", "--store", str(store),
           "--data-dir", str(data_dir), "--redis-url", REDIS_URL, "--log-level", "info"]
    data_dir.mkdir(parents=True)
    with open(log, "wb") as out:
        # cwd: the data dir, so no developer's .env is read
        proc = subprocess.Popen(cmd, cwd=data_dir, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline, base = time.time() + 90, None
        while time.time() < deadline and base is None:
            if proc.poll() is not None:
                raise RuntimeError(f"replica exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            m = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log.read_text())
            base = m.group(1) if m else None
            time.sleep(0.1)
        if not (base and wait_ready(base, deadline, interval=0.1)):
            raise RuntimeError(f"replica not ready:\n{log.read_text()[-3000:]}")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _post(base: str, queries: list, idem: str | None = None, record: bool = True) -> httpx.Response:
    headers = {"Authorization": f"Bearer {QUERY}"}
    if idem:
        headers["Idempotency-Key"] = idem
    body = {"queries": queries, "top_k": 100, "granularity": "sources", "record": record}
    return httpx.post(base + "/v1/attributions", json=body, headers=headers, timeout=30)


def test_two_replicas_share_redis_and_add_up(tiny_store, prefix, redis_client, tmp_path):
    X, _ = load_digits_test()
    q = lambda i: {"input": [float(v) for v in X[i]]}  # noqa: E731
    with ExitStack() as stack, ThreadPoolExecutor(16) as pool:
        # start both at once (each loads torch and the store)
        futs = [pool.submit(stack.enter_context, replica(Path(tiny_store), tmp_path / f"var-{n}", prefix,
                                                         tmp_path / f"replica-{n}.log")) for n in "ab"]
        a, b = (f.result() for f in futs)
        t_start = time.time()
        source_ids = httpx.get(a + "/v1/store", headers={"Authorization": f"Bearer {QUERY}"}).json()["source_ids"]
        counted: list[dict] = []  # responses whose credit must be in the aggregates, once each
        answered = 0  # queries answered with 200 (both replicas' /v1/stats)

        # 1. no idempotency key, alternating replicas; inputs repeat across replicas (shared result cache)
        for r in range(9):
            resp = _post((a, b)[r % 2], [q(2 * (r % 3)), q(2 * (r % 3) + 1)])
            assert resp.status_code == 200, resp.text
            counted.append(resp.json())
            answered += 2
        assert any(at["cached"] for body in counted[3:] for at in body["attributions"])

        # 2. a concurrent burst on both replicas
        jobs = [pool.submit(_post, (a, b)[i % 2], [q(20 + i), q(40 + i), q(60 + i)]) for i in range(16)]
        for j in jobs:
            resp = j.result()
            assert resp.status_code == 200, resp.text
            counted.append(resp.json())
            answered += 3

        # 3. one idempotency key, replica A then replica B: B replays A's answer, counted once
        first = _post(a, [q(100), q(101)], idem="order-1")
        again = _post(b, [q(100), q(101)], idem="order-1")
        assert first.status_code == again.status_code == 200
        assert again.headers.get("Idempotent-Replayed") == "true" and again.json() == first.json()
        counted.append(first.json())
        answered += 4

        # 4. one idempotency key sent to both replicas at the same time: one answer, counted once
        twins = [pool.submit(_post, base, [q(110), q(111), q(112)], "order-2") for base in (a, b, a, b)]
        bodies = [t.result() for t in twins]
        assert all(t.status_code == 200 for t in bodies)
        assert len({t.json()["request_id"] for t in bodies}) == 1
        counted.append(bodies[0].json())
        answered += 12

        # 5. not recorded; and a reused key with another body is refused
        assert _post(b, [q(120)], record=False).status_code == 200
        answered += 1
        assert _post(b, [q(130)], idem="order-1").status_code == 422
        t_end = time.time()

        # expected aggregates, recomputed from the answers with the service's credit rule
        exp_credit = dict.fromkeys(source_ids, 0)
        exp_hits = dict.fromkeys(source_ids, 0)
        exp_queries = positive = 0
        for body in counted:
            assert body["recorded"] is True
            for at in body["attributions"]:
                scores = {s["id"]: s["score"] for s in at["sources"]}
                assert set(scores) == set(source_ids)
                units = credit([scores[s] for s in source_ids], UNITS)
                for i, u in units.items():
                    exp_credit[source_ids[i]] += u
                    exp_hits[source_ids[i]] += 1
                exp_queries += 1
                positive += bool(units)
        assert exp_queries == 2 * 9 + 3 * 16 + 2 + 3

        rep_h = {"Authorization": f"Bearer {REPORT}"}
        views = [httpx.get(base + "/v1/sources", headers=rep_h).json() for base in (a, b)]
        assert views[0] == views[1]  # one truth, whichever replica answers
        v = views[0]
        assert v["total_queries"] == exp_queries
        got = {s["id"]: s for s in v["sources"]}
        assert {i: got[i]["credit_units"] for i in source_ids} == exp_credit
        assert {i: got[i]["queries"] for i in source_ids} == exp_hits
        assert sum(s["credit_units"] for s in v["sources"]) == positive * UNITS
        assert positive >= exp_queries - 2  # nearly every query credits someone (margin of the predicted class)
        assert all(sum(s["trend"]) == s["credit_units"] for s in v["sources"])

        # the compensation report: same from both replicas, reconciles to the pool
        bucket = v["bucket_s"]
        iso = lambda t: datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
        period = {"start": iso(int(t_start // bucket * bucket)), "end": iso(int(t_end // bucket * bucket + bucket)),
                  "amount": "98765.43", "currency": "USD"}
        reps = [httpx.get(base + "/v1/reports/compensation", params=period, headers=rep_h).json() for base in (a, b)]
        assert reps[0] == reps[1]
        rep = reps[0]
        assert rep["total_queries"] == exp_queries
        assert rep["total_credit_units"] == positive * UNITS
        assert rep["pool_minor"] == 9876543 == rep["allocated_minor"] == sum(x["payout_minor"] for x in rep["lines"])
        assert {x["source_id"]: x["credit_units"] for x in rep["lines"]} == {k: u for k, u in exp_credit.items() if u}
        text = httpx.get(b + "/v1/reports/compensation", params={**period, "format": "csv"}, headers=rep_h).text
        assert sum(int(r["payout_minor"]) for r in csv.DictReader(io.StringIO(text))) == 9876543

        # served figures are per replica: together they saw every answered query
        stats = [httpx.get(base + "/v1/stats", headers=rep_h).json() for base in (a, b)]
        assert stats[0]["queries"] > 0 and stats[1]["queries"] > 0
        assert stats[0]["queries"] + stats[1]["queries"] == answered
        assert all(s["journal_entries"] == 0 and s["redis"] for s in stats)
    # each replica kept its own (empty) journal in its own data dir
    for n in "ab":
        assert (tmp_path / f"var-{n}" / "journal").is_dir()

