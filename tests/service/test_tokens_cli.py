"""``rampctl token create | list | revoke`` on the local database (SQLite, and once PostgreSQL):
expiry, the table (never a secret), revocation by name, and one-line errors with exit codes."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from rampctl.main import app
from service.auth import tokens
from service.db.base import utcnow
from service.db.models import ApiToken
from service.db.session import make_engine, make_session_factory

runner = CliRunner()


class Cli:
    def __init__(self, database_url: str, home: Path) -> None:
        self.url = database_url
        self.env = {"DATABASE_URL": database_url, "RAMP_HOME": str(home), "COLUMNS": "200"}

    def __call__(self, *args: str) -> Any:
        return runner.invoke(app, ["token", *args], env=self.env)

    def create(self, *args: str) -> str:
        r = self("create", *args)
        assert r.exit_code == 0, r.output
        return r.stdout.strip().splitlines()[-1]

    def rows(self) -> list[ApiToken]:
        engine = make_engine(self.url)
        try:
            with make_session_factory(engine)() as s:
                return tokens.list_api_tokens(s)
        finally:
            engine.dispose()

    def verify(self, plain: str) -> ApiToken:
        engine = make_engine(self.url)
        try:
            with make_session_factory(engine)() as s:
                return tokens.verify_api_token(s, plain)
        finally:
            engine.dispose()


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(f"sqlite:///{tmp_path / 'cli.db'}", tmp_path)


def _check_lifecycle(cli: Cli) -> None:
    alice = cli.create("alice")
    bob = cli.create("bob", "--admin", "--expires-in", "7")
    assert alice.startswith("ramp_") and bob.startswith("ramp_") and alice != bob
    by_name = {t.name: t for t in cli.rows()}
    assert by_name["alice"].expires_at is None and not by_name["alice"].is_admin
    expires = by_name["bob"].expires_at
    assert by_name["bob"].is_admin and expires is not None
    assert timedelta(days=7) - timedelta(minutes=5) < expires - utcnow() <= timedelta(days=7)
    assert cli.verify(alice).name == "alice"

    listing = cli("list")
    assert listing.exit_code == 0, listing.output
    for header in ("name", "admin", "created", "expires", "last used", "revoked"):
        assert header in listing.stdout
    assert "alice" in listing.stdout and "bob" in listing.stdout
    assert f"{expires:%Y-%m-%d %H:%M}" in listing.stdout
    for row in cli.rows():
        assert row.token_hash not in listing.output
    assert alice not in listing.output and bob not in listing.output

    # Issue 19 (10): a second token for an existing owner is a deliberate act, shown in the list.
    again = cli("create", "alice")
    assert again.exit_code == 2 and "owner 'alice' already exists (1 token)" in again.output, again.output
    assert "--existing-owner" in again.output and "Traceback" not in again.output
    assert len(cli.rows()) == 2  # nothing created
    second = cli.create("alice", "--existing-owner")
    rows = {t.id: t for t in cli.rows()}
    alice_rows = [t for t in rows.values() if t.name == "alice"]
    assert len(alice_rows) == 2 and len({t.principal_id for t in alice_rows}) == 1
    table = cli("list").stdout
    owner = f"#{alice_rows[0].principal_id}"
    alice_lines = [line for line in table.splitlines() if " alice " in line]
    assert len(alice_lines) == 2 and all(owner in line and " 2 " in line for line in alice_lines), table
    assert "tokens of owner" in table
    r = cli("revoke", "alice")
    assert r.exit_code == 0 and "revoked 2 tokens named 'alice'" in r.stdout, r.output
    for plain in (alice, second):
        with pytest.raises(tokens.TokenRejected, match="token revoked"):
            cli.verify(plain)
    assert cli.verify(bob).name == "bob"  # other names untouched
    listing = cli("list").stdout
    assert listing.count("alice") == 2 and f"{utcnow():%Y-%m-%d}" in listing


def test_create_list_and_revoke_on_sqlite(cli: Cli) -> None:
    _check_lifecycle(cli)


def test_create_list_and_revoke_on_postgresql(pg_empty_url: str, tmp_path: Path) -> None:
    _check_lifecycle(Cli(pg_empty_url, tmp_path))


def test_revoking_an_unknown_or_already_revoked_name_fails_clearly(cli: Cli) -> None:
    r = cli("revoke", "nobody")
    assert r.exit_code == 1 and "no token named 'nobody'" in r.output and "Traceback" not in r.output
    cli.create("frank")
    assert cli("revoke", "frank").exit_code == 0
    r = cli("revoke", "frank")
    assert r.exit_code == 1 and "no active token named 'frank'" in r.output


@pytest.mark.parametrize("days", ["0", "-1", "nan", "inf", "100000"])
def test_expires_in_must_be_a_positive_number_of_days(cli: Cli, days: str) -> None:
    r = cli("create", "gina", "--expires-in", days)
    assert r.exit_code == 2 and "--expires-in must be a number of days > 0" in r.output, r.output
    assert "Traceback" not in r.output
    assert "no API tokens" in cli("list").stdout  # nothing created


def test_expires_in_that_is_not_a_number_is_a_usage_error(cli: Cli) -> None:
    r = cli("create", "gina", "--expires-in", "soon")
    assert r.exit_code == 2 and "Traceback" not in r.output and "--expires-in" in r.output


def test_a_fractional_day_and_an_empty_list(cli: Cli) -> None:
    r = cli("list")
    assert r.exit_code == 0 and "no API tokens" in r.stdout
    plain = cli.create("hal", "--expires-in", "0.5")
    row = cli.verify(plain)
    assert row.expires_at is not None
    assert timedelta(hours=11) < row.expires_at - utcnow() <= timedelta(hours=12)


def test_a_blank_name_is_refused(cli: Cli) -> None:
    r = cli("create", "  ")
    assert r.exit_code == 2 and "NAME must be" in r.output


def test_a_token_for_another_owner_s_name_is_refused_without_the_flag(cli: Cli) -> None:
    """Issue 19 (10): `token create admin` (non-admin) used to make a token that read the admin's
    jobs; now it is a usage error unless --existing-owner says it is meant, and --existing-owner
    for an owner that does not exist is one too."""
    cli.create("admin", "--admin")
    r = cli("create", "admin")
    assert r.exit_code == 2 and "owner 'admin' already exists" in r.output and "Traceback" not in r.output
    r = cli("create", "ghost", "--existing-owner")
    assert r.exit_code == 2 and "no owner named 'ghost'" in r.output
    assert [t.name for t in cli.rows()] == ["admin"]
