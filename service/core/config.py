"""The service's settings: one pydantic-settings class, read from the environment.

Everything is prefixed ``RAMP_`` except ``DATABASE_URL`` and ``RAY_ADDRESS``, which keep the names
the rest of the ecosystem (docker-compose, Helm charts, Ray itself) already uses.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.jobs.paths import PathPolicy
from workers.contract.layout import JobLayout


def _default_home() -> Path:
    return Path.home() / ".ramp"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAMP_", populate_by_name=True, extra="ignore")

    # Root of everything the embedded service writes (DB file, artifacts, admin token, Ray tmp).
    home: Path = Field(default_factory=_default_home)
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "database_url")
    )
    # None: the service starts (and stops) its own local Ray head.
    ray_address: str | None = Field(default=None, validation_alias=AliasChoices("RAY_ADDRESS", "ray_address"))
    ray_dashboard_url: str | None = None
    ray_auth_mode: Literal["disabled", "token"] = "disabled"
    ray_num_cpus: int | None = Field(default=None, ge=1)
    # How long the embedded head may take to answer: seconds when the machine is idle, minutes on a
    # crowded one (the demo allows more).
    ray_start_timeout_s: float = Field(default=90.0, gt=0, le=3600)
    # How often the service looks whether its embedded head still runs, and restarts it if not
    # (0: never -- a dead head then stays dead until the service restarts).
    ray_head_check_s: float = Field(default=5.0, ge=0, le=3600)
    ray_tmpdir: Path | None = None
    storage_dir: Path | None = None
    # Directories a job spec may name paths under (data_root, data_file, checkpoint, init_from):
    # RAMP_DATA_ROOTS=/data:/models (or comma-separated, or a JSON list). Default: $RAMP_HOME/data.
    data_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # Where job drivers (possibly on other machines) reach the internal endpoints.
    public_url: str | None = None
    # Where people reach the service's pages (RAMP_EXTERNAL_URL): the job page's URL in Ray's job
    # metadata. Default: http://<host>:<port> (127.0.0.1 for a wildcard host).
    external_url: str | None = None
    max_concurrent_jobs: int = Field(default=2, ge=1)
    dispatch_interval_s: float = Field(default=1.0, gt=0)
    # An automatic retry waits this long after the failure: a lost node is declared dead by Ray's
    # GCS only after its health checks miss (about 15 s by default, longer on a loaded head), and a
    # retry submitted before then can be placed on the dead node and fail again
    # (docs/reliability.md, "Node lost").
    retry_delay_s: float = Field(default=30.0, ge=0)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Requests per minute per API token on /v1 and the web pages (a burst of this many, refilled
    # evenly); 0 disables.
    # In-process: each replica counts on its own (service.auth.ratelimit).
    rate_limit_per_minute: int = Field(default=600, ge=0)
    # The web pages' own polling (per token; sized for ~20 visible pages, service.auth.ratelimit) and
    # login attempts (per client address); 0 disables either.
    poll_rate_limit_per_minute: int = Field(default=1200, ge=0)
    login_rate_limit_per_minute: int = Field(default=30, ge=0)
    # Reverse proxies (addresses or CIDR networks) whose X-Forwarded-For / -Proto / -Host headers are
    # believed: RAMP_TRUSTED_PROXIES=127.0.0.1,10.0.0.0/8. Default none: the headers are ignored.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # How long a login of the web pages lasts (never past its token's expiry); logout ends it at once.
    ui_session_hours: float = Field(default=12.0, gt=0, le=24 * 30)
    sse_poll_interval_s: float = Field(default=0.5, gt=0)
    # Open event streams (follow=true): per API token (beyond: 429) and per process (beyond: 503);
    # an open stream re-checks its token this often, so a revoked or expired token's streams end
    # within stream_auth_recheck_s + sse_poll_interval_s (service.events.streams).
    max_streams_per_token: int = Field(default=10, ge=1)
    max_streams: int = Field(default=100, ge=1)
    stream_auth_recheck_s: float = Field(default=5.0, gt=0, le=300)
    admin_token_file: Path | None = None
    # Production: a pre-provisioned admin token (e.g. from a Kubernetes Secret) to register at start-up.
    admin_token: str | None = None
    driver_python: str = sys.executable
    run_migrations: bool = True
    # Database faults surface as 503 + Retry-After instead of requests hanging on a dead server.
    db_connect_timeout_s: float = Field(default=5.0, gt=0)
    db_statement_timeout_s: float = Field(default=30.0, gt=0)
    db_pool_timeout_s: float = Field(default=5.0, gt=0)
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=20, ge=0)
    retry_after_s: int = Field(default=5, ge=1)
    log_level: str = "INFO"
    log_json: bool = True

    @field_validator("data_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part for chunk in text.split(",") for part in chunk.split(":") if part.strip()]
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
        return value

    @model_validator(mode="after")
    def _derive_paths(self) -> Settings:
        home = self.home.expanduser()
        self.home = home
        if self.database_url is None:
            self.database_url = f"sqlite:///{home / 'ramp.db'}"
        if self.storage_dir is None:
            self.storage_dir = home / "artifacts"
        if not self.data_roots:
            self.data_roots = [home / "data"]
        if self.admin_token_file is None:
            self.admin_token_file = home / "admin_token"
        if self.ray_tmpdir is None:
            self.ray_tmpdir = home / "ray"
        if self.public_url is None:
            self.public_url = f"http://127.0.0.1:{self.port}"
        if self.external_url is None:
            host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
            host = f"[{host}]" if ":" in host else host
            self.external_url = f"http://{host}:{self.port}"
        self.external_url = self.external_url.rstrip("/")
        if self.ray_dashboard_url is None and self.ray_address is None:
            self.ray_dashboard_url = "http://127.0.0.1:8265"
        return self

    @property
    def embedded(self) -> bool:
        """True when the service owns its Ray head (no RAY_ADDRESS given)."""
        return self.ray_address is None

    @property
    def is_sqlite(self) -> bool:
        return str(self.database_url).startswith("sqlite")

    @property
    def layout(self) -> JobLayout:
        """Where jobs' files live under ``storage_dir`` (drivers write, the API serves)."""
        assert self.storage_dir is not None
        return JobLayout(self.storage_dir)

    @property
    def path_policy(self) -> PathPolicy:
        """Where job specs may point (``RAMP_DATA_ROOTS``; never into the storage by path)."""
        assert self.storage_dir is not None
        return PathPolicy.of(self.data_roots, self.storage_dir)

    def job_dir(self, job_id: int) -> Path:
        return self.layout.job_dir(job_id)
