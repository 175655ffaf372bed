"""`zapflow db upgrade | current | downgrade` as a person runs them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.cli import run_zapflow
from tests.support.servers import free_port
from zapflow.store import migrate


def zapflow(*args: str) -> subprocess.CompletedProcess[str]:
    return run_zapflow({**os.environ, "COLUMNS": "300"}, *args)


def test_upgrade_current_and_downgrade(database_url: str) -> None:
    head = migrate.head_revision()

    upgraded = zapflow("db", "upgrade", "--database-url", database_url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"upgraded database {database_url.split(':')[0]}" in upgraded.stdout
    assert f"revision {head} (the newest)" in upgraded.stdout

    current = zapflow("db", "current", "--database-url", database_url)
    assert current.returncode == 0, current.stderr
    assert f"revision {head} (the newest)" in current.stdout

    downgraded = zapflow("db", "downgrade", "base", "--database-url", database_url)
    assert downgraded.returncode == 0, downgraded.stderr
    assert "no migration applied" in downgraded.stdout


def test_the_url_comes_from_the_environment_too(database_url: str) -> None:
    result = run_zapflow({**os.environ, "ZAPFLOW_DATABASE_URL": database_url}, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    assert "upgraded database" in result.stdout


def test_an_unreachable_postgresql_is_a_clear_error() -> None:
    url = f"postgresql://zapflow:s3cret@127.0.0.1:{free_port()}/zapflow"

    result = zapflow("db", "upgrade", "--database-url", url)

    assert result.returncode == 1
    assert "error: cannot reach the database at postgresql://zapflow:***@127.0.0.1" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_bad_urls_and_revisions_are_clear_errors(tmp_path: Path) -> None:
    unsupported = zapflow("db", "current", "--database-url", "mysql://root@127.0.0.1/zapflow")
    assert unsupported.returncode == 1
    assert "unsupported database 'mysql'" in unsupported.stderr

    unknown = zapflow("db", "upgrade", "--revision", "9999", "--database-url", f"sqlite:///{tmp_path}/z.db")
    assert unknown.returncode == 1
    assert "Can't locate revision identified by '9999'" in unknown.stderr

    for result in (unsupported, unknown):
        assert "Traceback" not in result.stderr
