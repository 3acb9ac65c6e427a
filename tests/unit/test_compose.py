"""docker-compose.yml: its services, health checks and start order, and every MEDPG_ variable a setting.

The file is parsed with PyYAML, which resolves its anchors and ``<<`` merge keys as Compose does.
When a ``docker-compose`` binary is on PATH the file is also validated by Compose itself:
``docker-compose config`` needs no Docker engine (Debian's docker-compose 1.29, which .ci/run
installs). Where ``CI`` is set a missing binary is a failure, not a skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from medpg.config import ENV_PREFIX, Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
SETTING_VARIABLES = frozenset(ENV_PREFIX + name.upper() for name in Settings.model_fields)
# The services that run the medpg image.
MEDPG_SERVICES = ("migrate", "api", "worker", "worker-gpu")
API_PORT = 8750

# A MEDPG_ name inside a string: `${MEDPG_AUDIT_KEY:?...}`, a command line, a comment. Upper case
# only, so lower-case values such as the role name in postgresql://medpg_api@... do not count.
_NAME_IN_TEXT = re.compile(r"\bMEDPG_[A-Z0-9_]+")
_INTERPOLATION = re.compile(r"\$\{(\w+)[^}]*\}")


def medpg_variables(compose: Any) -> set[str]:
    """Every MEDPG_ variable a compose document sets or names, upper-cased.

    ``environment`` keys in any case (medpg reads its variables case-insensitively), as a mapping or
    as ``KEY=VALUE`` list items, and MEDPG_ names anywhere in a string.
    """
    found: set[str] = set()

    def environment_name(name: object) -> None:
        if isinstance(name, str) and name.upper().startswith(ENV_PREFIX):
            found.add(name.upper())

    def walk(node: Any, *, environment: bool = False) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                if environment:
                    environment_name(key)
                walk(key)
                walk(value, environment=key == "environment")
        elif isinstance(node, list):
            for item in node:
                if environment and isinstance(item, str):
                    environment_name(item.split("=", 1)[0])
                walk(item)
        elif isinstance(node, str):
            found.update(_NAME_IN_TEXT.findall(node))

    walk(compose)
    return found


def unknown_medpg_variables(compose: Any) -> list[str]:
    """The MEDPG_ variables in ``compose`` that name no setting (medpg refuses to start with one)."""
    return sorted(medpg_variables(compose) - SETTING_VARIABLES)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _condition(service: Mapping[str, Any], dependency: str) -> str | None:
    depends = service.get("depends_on", {})
    return depends.get(dependency, {}).get("condition") if isinstance(depends, Mapping) else None


def _health_command(service: Mapping[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else str(test)


def _runs_beat(service: Mapping[str, Any]) -> bool:
    # `medpg worker` runs beat unless told --no-beat.
    return service["command"][0] == "worker" and "--no-beat" not in service["command"]


# --------------------------------------------------------------------------------------------------
# MEDPG_ variables


def test_every_medpg_variable_in_the_file_is_a_setting(compose: dict[str, Any]) -> None:
    assert unknown_medpg_variables(compose) == []
    # Comments too: they tell the operator what to set.
    in_text = set(_NAME_IN_TEXT.findall(COMPOSE_FILE.read_text()))
    assert sorted(in_text - SETTING_VARIABLES) == []
    assert {"MEDPG_DATABASE_URL", "MEDPG_BROKER_URL", "MEDPG_AUDIT_KEY"} <= medpg_variables(compose)


def test_the_checker_catches_a_variable_no_setting_reads() -> None:
    compose = {
        "x-medpg": {"environment": {"MEDPG_DEVICE": "cpu", "MEDPG_DEVICES": "cuda"}},
        "services": {
            "api": {
                "environment": ["medpg_api_prot=8750", "MEDPG_API_HOST=0.0.0.0", "HF_HOME=/models"],
                "command": ["serve", "--port", "${MEDPG_API_PORTT:-8750}"],
            },
            "migrate": {"environment": {"MEDPG_DATABASE_URL": "postgresql://medpg_api@db/medpg"}},
        },
    }
    assert unknown_medpg_variables(compose) == ["MEDPG_API_PORTT", "MEDPG_API_PROT", "MEDPG_DEVICES"]


@pytest.mark.parametrize("name", MEDPG_SERVICES)
def test_each_medpg_service_has_valid_settings(services: dict[str, dict[str, Any]], name: str) -> None:
    """The values validate too: each service's MEDPG_ environment builds a Settings object."""
    env = _environment(services[name])
    for required in ("MEDPG_DATABASE_URL", "MEDPG_BROKER_URL", "MEDPG_AUDIT_KEY", "MEDPG_MODEL_PROFILE"):
        assert required in env, (name, required)
    values = {
        key.upper().removeprefix(ENV_PREFIX).lower(): _INTERPOLATION.sub(lambda m: f"test-{m[1]}", value)
        for key, value in env.items()
        if key.upper().startswith(ENV_PREFIX)
    }
    cfg = Settings(_settings_file=None, _env_file=None, **values)  # type: ignore[call-arg]
    assert cfg.database_url is not None and "@db:5432/" in cfg.database_url
    assert cfg.broker_url is not None and cfg.broker_url.startswith("redis://redis:")
    assert cfg.hf_offline
    assert cfg.api_port == API_PORT


def test_the_audit_key_is_required_from_the_environment(services: dict[str, dict[str, Any]]) -> None:
    # A key written in the file would be public; `${VAR:?message}` makes Compose stop without it.
    for name in MEDPG_SERVICES:
        assert re.fullmatch(r"\$\{MEDPG_AUDIT_KEY:\?.+\}", _environment(services[name])["MEDPG_AUDIT_KEY"])


# --------------------------------------------------------------------------------------------------
# services, health checks, start order


def test_the_services(services: dict[str, dict[str, Any]]) -> None:
    assert {"db", "redis", *MEDPG_SERVICES} <= services.keys()
    for name in MEDPG_SERVICES:
        assert services[name]["image"] == "medpg:latest", name
        assert services[name]["build"] == ".", name


def test_the_database_is_postgresql_18_with_pgvector(services: dict[str, dict[str, Any]]) -> None:
    db = services["db"]
    assert db["image"] == "pgvector/pgvector:pg18"
    # PostgreSQL 18 images keep PGDATA in /var/lib/postgresql/18/docker: the volume is its parent.
    assert any(str(v).split(":")[1] == "/var/lib/postgresql" for v in db["volumes"]), db["volumes"]
    assert "pg_isready" in _health_command(db)


def test_redis_has_a_health_check(services: dict[str, dict[str, Any]]) -> None:
    assert "redis-cli ping" in _health_command(services["redis"])


def test_the_migration_runs_once_after_the_database_is_healthy(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert migrate["command"] == ["db", "upgrade"]
    assert migrate["restart"] == "no"  # the string: a bare `no` in YAML is false
    assert _condition(migrate, "db") == "service_healthy"


def test_the_api(services: dict[str, dict[str, Any]]) -> None:
    api = services["api"]
    assert api["command"] == ["serve", "--host", "0.0.0.0", "--port", str(API_PORT)]
    assert api["ports"] == [f"127.0.0.1:{API_PORT}:{API_PORT}"]
    assert _condition(api, "migrate") == "service_completed_successfully"
    assert _condition(api, "redis") == "service_healthy"
    test = api["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    assert f"http://127.0.0.1:{API_PORT}/health" in test[3] and "urllib" in test[3]
    compile(test[3], "healthcheck", "exec")


def test_the_workers(services: dict[str, dict[str, Any]]) -> None:
    cpu, gpu = services["worker"], services["worker-gpu"]
    for worker in (cpu, gpu):
        assert worker["command"][0] == "worker"
        assert _condition(worker, "migrate") == "service_completed_successfully"
        assert _condition(worker, "redis") == "service_healthy"
    assert "profiles" not in cpu  # the default profile: it always runs
    assert _environment(cpu)["MEDPG_DEVICE"] == "cpu"
    assert gpu["profiles"] == ["gpu"]
    assert _environment(gpu)["MEDPG_DEVICE"].startswith("cuda")
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), devices
    # The GPU worker takes the embed queue only; the always-on CPU worker has the control queue.
    queues = gpu["command"][gpu["command"].index("--queues") + 1]
    assert queues == Settings.model_fields["embed_queue"].default


def test_one_worker_runs_beat(services: dict[str, dict[str, Any]]) -> None:
    beats = [name for name, service in services.items() if "command" in service and _runs_beat(service)]
    assert beats == ["worker"]


def test_dependencies_can_be_met(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    """Every dependency exists; one waited on healthy has a health check; one waited on done exits."""
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in services, (name, dependency)
            assert "profiles" not in services[dependency], (name, dependency)
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], (name, dependency)
            elif spec["condition"] == "service_completed_successfully":
                assert services[dependency]["restart"] == "no", (name, dependency)
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if not source.startswith((".", "/")):
                assert source in compose["volumes"], (name, source)


# --------------------------------------------------------------------------------------------------
# Compose itself


def _docker_compose() -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        reason = (
            "no docker-compose on PATH to validate docker-compose.yml "
            "(apt-get install --no-install-recommends docker-compose; .ci/run does)"
        )
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false"):
            pytest.fail(f"{reason}; CI is set, so the file must be validated")
        pytest.skip(reason)
    return binary


def _compose_config(tmp_path: Path, *args: str, audit_key: str | None) -> subprocess.CompletedProcess[str]:
    # An empty env file instead of a developer's .env, and none of their COMPOSE_/MEDPG_ variables.
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("COMPOSE_", ENV_PREFIX))}
    if audit_key is not None:
        env["MEDPG_AUDIT_KEY"] = audit_key
    return subprocess.run(
        [_docker_compose(), "-f", str(COMPOSE_FILE), "--env-file", str(env_file), *args, "config", "-q"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("profile", [(), ("--profile", "gpu")], ids=["default", "gpu"])
def test_docker_compose_accepts_the_file(tmp_path: Path, profile: tuple[str, ...]) -> None:
    out = _compose_config(tmp_path, *profile, audit_key="test-audit-key")
    assert out.returncode == 0, out.stderr


def test_docker_compose_refuses_to_run_without_an_audit_key(tmp_path: Path) -> None:
    out = _compose_config(tmp_path, audit_key=None)
    assert out.returncode != 0
    assert "set MEDPG_AUDIT_KEY" in out.stderr
