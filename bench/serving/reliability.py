"""``python -m bench.serving.reliability``: run the reliability tests and write their
figures (``bench/results/reliability.json``) and, with ``--write-md``, the
"Reliability" section of BENCHMARKS.md.

The scenarios are the tests in ``tests/reliability`` (Redis stopped and
restarted under load, store hot swap under load, schema fuzz and hostile
bodies, overload), which report their figures through ``FA_RELIABILITY_OUT``;
the worker resume scenario is ``tests/worker/test_resume.py`` (its outcome
and duration are taken from pytest's JUnit report).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

from bench.harness.common import RESULTS, ROOT, loadavg, machine
from bench.serving.reports import RESUME


def run(extra: list[str]) -> dict:
    out = RESULTS / "reliability.json"
    out.unlink(missing_ok=True)
    junit = tempfile.mktemp(suffix=".xml")
    env = {**os.environ, "FA_RELIABILITY_OUT": str(out)}
    cmd = [sys.executable, "-m", "pytest", "tests/reliability", RESUME, "-p", "no:cacheprovider", "-q",
           f"--junitxml={junit}", *extra]
    la = loadavg()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    res = json.loads(out.read_text()) if out.exists() else {"scenarios": []}
    cases = []
    for tc in ET.parse(junit).getroot().iter("testcase"):
        status = "passed"
        for tag in ("failure", "error", "skipped"):
            if tc.find(tag) is not None:
                status = tag
        cases.append({"test": f"{tc.get('classname')}::{tc.get('name')}", "seconds": float(tc.get("time", 0)),
                      "status": status})
    os.unlink(junit)
    resume = [c for c in cases if "test_killed_worker_resumes" in c["test"]]
    if resume:
        res["scenarios"].append({"scenario": "worker killed mid-simulation, rerun resumes", "requests": 0,
                                 "lost": 0, "double_counted": 0, "failed_requests": 0,
                                 "status": resume[0]["status"], "seconds": resume[0]["seconds"]})
    res.update({"command": ("python -m bench.serving.reliability " + shlex.join(extra)).strip(), "machine": machine(),
                "load_start": la, "load_end": loadavg(), "pytest_rc": proc.returncode,
                "pytest_tail": proc.stdout[-1500:], "tests": cases,
                "total_seconds": round(sum(c["seconds"] for c in cases), 1)})
    out.write_text(json.dumps(res, indent=1) + "\n")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.serving.reliability", description=__doc__.split("\n\n")[0])
    ap.add_argument("--write-md", action="store_true", help="replace the Reliability section of BENCHMARKS.md")
    ap.add_argument("--from-json", action="store_true", help="only rewrite the section from the last results "
                    "(as python -m bench.serving.reports reliability)")
    ap.add_argument("pytest_args", nargs="*")
    a = ap.parse_args(argv)
    from bench.serving import reports

    if a.from_json:
        return reports.main(["reliability"])
    res = run(a.pytest_args)
    print(res["pytest_tail"], file=sys.stderr)
    if a.write_md:
        reports.main(["reliability"])
    return 0 if res["pytest_rc"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
