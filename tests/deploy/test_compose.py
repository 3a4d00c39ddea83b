"""The deployment files, checked without a Docker engine: docker-compose.yml
(services, volumes, health checks, dependencies, commands parsed by the
real CLIs), the Dockerfile (stages, variants, copied paths, the command) and
.dockerignore. ``docker compose config`` / ``docker-compose config`` runs
when a Compose client is installed (it needs no engine)."""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def _flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_services_volumes_and_dependencies(compose):
    svc = compose["services"]
    assert {"redis", "worker", "api"} <= set(svc)
    assert {"redis-data", "stores"} <= set(compose["volumes"])

    redis = svc["redis"]
    cmd = redis["command"]
    assert cmd[0] == "redis-server" and _flag(cmd, "--appendonly") == "yes"
    assert _flag(cmd, "--appendfsync") == "everysec"
    assert "redis-data:/data" in redis["volumes"] and _flag(cmd, "--dir") == "/data"
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]

    worker, api = svc["worker"], svc["api"]
    assert worker.get("restart", "no") == "no"  # one shot
    assert "stores:/stores" in worker["volumes"]
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert api["depends_on"]["worker"]["condition"] == "service_completed_successfully"
    assert "stores:/stores:ro" in api["volumes"]
    data_dir = _flag(api["command"], "--data-dir")
    assert data_dir in api["volumes"]  # an anonymous volume: one journal per replica, never shared
    assert not any(isinstance(v, str) and v.endswith(":" + data_dir) for v in api["volumes"])
    assert api["environment"]["FA_REDIS_URL"] == "redis://redis:6379/0"
    # scalable: no container_name, and no single fixed host port (a range, or none)
    assert "container_name" not in api
    for p in api.get("ports", []):
        published = str(p).rsplit(":", 1)[0] if isinstance(p, str) else str(p["published"])
        assert "-" in published, f"api publishes a fixed host port {p!r}: --scale api=N would collide"
    assert "8000" in [str(e) for e in api["expose"]]


def test_commands_parse_with_the_real_clis(compose):
    from service.__main__ import parse_args
    from worker.cli import _parser
    from worker.config import PRESETS

    svc = compose["services"]
    w = svc["worker"]["command"]
    assert w[:3] == ["python", "-m", "worker"] and (REPO / "worker" / "__main__.py").is_file()
    wa = _parser().parse_args(w[3:])
    assert wa.cmd == "build" and wa.preset == "digits" and wa.preset in PRESETS
    assert str(wa.store) == "/stores/digits"

    a = svc["api"]["command"]
    assert a[:3] == ["python", "-m", "service"] and (REPO / "service" / "__main__.py").is_file()
    aa = parse_args(a[3:])
    assert wa.if_missing and not aa.no_build and str(aa.store) == str(wa.store)  # serves what the worker published
    assert aa.host == "0.0.0.0" and aa.port == 8000
    # the store path lies on the shared volume of both
    assert str(aa.store).startswith("/stores/")


def test_optional_load_balancer(compose):
    lb = compose["services"].get("lb")
    if lb is None:
        pytest.skip("no lb service")
    assert lb["profiles"] == ["lb"]
    conf = " ".join(lb["command"])
    assert "http://api:8000" in conf and "resolver 127.0.0.11" in conf  # Docker's DNS: every replica


def test_compose_config_validates(tmp_path):
    """``docker compose config`` (v2 plugin) or ``docker-compose config`` (v1):
    schema, interpolation and references. Skipped without a Compose client."""
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) and subprocess.run([*cmd, "version"], capture_output=True).returncode == 0:
            break
    else:
        pytest.skip("no docker compose client installed")
    r = subprocess.run([*cmd, "-f", str(REPO / "docker-compose.yml"), "config", "--quiet"], capture_output=True,
                       text=True, cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*cmd, "-f", str(REPO / "docker-compose.yml"), "--profile", "lb", "config", "--services"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    assert set(r.stdout.split()) == {"redis", "worker", "api", "lb"}


def test_dockerfile_stages_variants_and_paths(dockerfile):
    ops = [op for op, _ in dockerfile]
    stages = [re.split(r"\s+as\s+", args, flags=re.I)[-1] for op, args in dockerfile if op == "FROM"]
    assert len(stages) >= 2 and "build" in stages and "runtime" in stages  # multi-stage
    defaults = [a.split("=", 1) for op, a in dockerfile if op == "ARG" and "=" in a]
    assert ["VARIANT", "cpu"] in defaults  # the CPU image unless --build-arg VARIANT=cuda
    for variant in ("cpu", "cuda"):
        assert f"runtime-{variant}" in stages
    assert any(op == "FROM" and "runtime-${VARIANT}" in a for op, a in dockerfile)
    run = " ".join(a for op, a in dockerfile if op == "RUN")
    assert "download.pytorch.org/whl/cpu" in run and "download.pytorch.org/whl/${CUDA_TAG}" in run
    assert "pip install ." in run

    # every COPY from the context exists and is not excluded by .dockerignore
    ignore = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
              if p.strip() and not p.startswith("#")]
    copied = []
    for op, a in dockerfile:
        if op == "COPY" and not a.startswith("--from"):
            copied += shlex.split(a)[:-1]
    assert {"pyproject.toml", "README.md", "influence", "worker", "service"} <= set(copied)
    for path in copied:
        assert (REPO / path).exists(), path
        assert not any(fnmatch.fnmatch(path, pat) for pat in ignore), f"{path} is excluded by .dockerignore"
    for secret in (".env", ".git"):
        assert secret in ignore
    assert "service/static/*" not in ignore and "service" not in ignore

    # runs as a non-root user, serves the API by default, checks readiness
    assert any(op == "USER" and a not in ("root", "0") for op, a in dockerfile)
    cmd = next(a for op, a in reversed(dockerfile) if op == "CMD")
    assert "python -m worker build" in cmd and "--if-missing" in cmd  # the worker builds a first store...
    assert "exec python -m service" in cmd and "--no-build" not in cmd  # ...and the service never trains
    health = next(a for op, a in dockerfile if op == "HEALTHCHECK")
    assert "/readyz" in health
    assert "EXPOSE" in ops and ("EXPOSE", "8000") in dockerfile
    env = " ".join(a for op, a in dockerfile if op == "ENV")
    assert "FA_HOST=0.0.0.0" in env and "FA_STORE=/stores/digits" in env


def test_routes_the_deployment_relies_on_exist(tmp_path):
    """The health check, the dashboard and the API paths the docs name are
    routed (no lifespan: nothing is loaded, so /readyz answers 503)."""
    import asyncio

    import httpx

    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(_env_file=None, store=tmp_path / "none", data_dir=tmp_path / "var"))

    async def statuses() -> dict[str, int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fa") as c:
            paths = ("/healthz", "/readyz", "/dashboard", "/dashboard/static/dashboard.js", "/v1/sources",
                     "/v1/reports/compensation", "/v1/playground/examples")
            return {p: (await c.get(p)).status_code for p in paths}

    got = asyncio.run(statuses())
    assert got["/healthz"] == 200 and got["/readyz"] == 503
    assert got["/dashboard"] == 200 and got["/dashboard/static/dashboard.js"] == 200
    assert all(code != 404 for code in got.values()), got


def test_deploy_doc_covers_the_deployments():
    doc = (REPO / "docs" / "deploy.md").read_text()
    for needle in ("docker compose", "--scale api=", "torchrun", "--nnodes", "Redis Cluster", "journal",
                   "shared volume", "VARIANT=cuda", "load balancer"):
        assert needle in doc, needle
