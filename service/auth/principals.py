"""Owners of jobs (``principals``): an id, compared by the tenancy rule, and a unique name.

A token is made for a *new* owner unless its maker says otherwise: naming an existing owner is a
deliberate act (``existing_owner=True``; ``rampctl token create NAME --existing-owner``), because
that token will read and act on every job of that owner.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db.base import utcnow
from service.db.models import ApiToken
from service.db.models import Principal as PrincipalRow


class OwnerExists(Exception):
    """A new token named an owner that already exists, without saying it meant to."""

    def __init__(self, name: str, tokens: int) -> None:
        self.name = name
        self.tokens = tokens
        super().__init__(
            f"owner {name!r} already exists ({tokens} token{'s' if tokens != 1 else ''}): a new token for "
            "it would read and act on all of its jobs; say so explicitly (--existing-owner) or choose "
            "another name"
        )


class NoSuchOwner(LookupError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no owner named {name!r} (see `rampctl token list`)")


def find(session: Session, name: str) -> PrincipalRow | None:
    return session.scalars(select(PrincipalRow).where(PrincipalRow.name == name)).first()


def token_count(session: Session, principal_id: int) -> int:
    return int(session.scalar(select(func.count()).where(ApiToken.principal_id == principal_id)) or 0)


def for_new_token(session: Session, name: str, *, existing_owner: bool) -> PrincipalRow:
    """The principal a new token named ``name`` joins: a new one, or -- only with
    ``existing_owner`` -- the existing one (``OwnerExists`` / ``NoSuchOwner`` otherwise). Flushed,
    not committed: the caller adds the token in the same transaction."""
    found = find(session, name)
    if found is not None:
        if not existing_owner:
            raise OwnerExists(name, token_count(session, found.id))
        return found
    if existing_owner:
        raise NoSuchOwner(name)
    row = PrincipalRow(name=name, created_at=utcnow())
    session.add(row)
    try:
        session.flush()
    except IntegrityError:  # made by a concurrent request a moment ago: it is not new any more
        session.rollback()
        found = find(session, name)
        raise OwnerExists(name, token_count(session, found.id) if found else 0) from None
    return row


def ensure(session: Session, name: str) -> PrincipalRow:
    """The principal called ``name``, created (and committed) if missing: the service's own admin
    at start-up."""
    found = find(session, name)
    if found is not None:
        return found
    row = PrincipalRow(name=name, created_at=utcnow())
    session.add(row)
    try:
        session.commit()
    except IntegrityError:  # another replica made it first
        session.rollback()
        found = find(session, name)
        assert found is not None
        return found
    return row


def names(session: Session, ids: set[int]) -> dict[int, str]:
    """id -> name of the given principals."""
    if not ids:
        return {}
    rows = session.execute(select(PrincipalRow.id, PrincipalRow.name).where(PrincipalRow.id.in_(ids)))
    return {int(i): str(n) for i, n in rows.all()}
