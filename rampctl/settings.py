"""The CLI's settings: one pydantic-settings class, read from the environment when a command runs.

``RAMP_URL`` (default http://127.0.0.1:8000) and ``RAMP_TOKEN`` say which service to talk to and
as whom. Without ``RAMP_TOKEN`` the client falls back on the embedded service's admin token file,
``RAMP_ADMIN_TOKEN_FILE`` or else ``$RAMP_HOME/admin_token`` (``RAMP_HOME`` defaults to ~/.ramp),
the same paths the service's own settings derive, so ``rampctl serve`` + ``rampctl submit`` on one
machine need no token setup. An empty variable counts as unset, as it always has for the CLI.

The service-side commands (``serve``, ``token``, ``db``) read the service's ``Settings`` instead:
they act on the service's database and configuration, not on a client connection.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from workers.contract.retry import RetryPolicy

DEFAULT_URL = "http://127.0.0.1:8000"


def _default_home() -> Path:
    return Path.home() / ".ramp"


class CliSettings(BaseSettings):
    """What a client command needs: where the service is, the token, timeouts and reconnects."""

    # extra="ignore": the service's RAMP_* variables share the environment with these.
    model_config = SettingsConfigDict(env_prefix="RAMP_", env_ignore_empty=True, extra="ignore")

    url: str = DEFAULT_URL
    token: SecretStr | None = None
    home: Path = Field(default_factory=_default_home)
    admin_token_file: Path | None = None
    # One request's connect/read/write timeout. An event stream waits on reads without a limit
    # (a quiet job sends only keep-alives), so only its connect uses this.
    request_timeout_s: float = Field(default=30.0, gt=0)
    # A dropped event stream is reopened (with Last-Event-ID) up to this many times in a row,
    # waiting reconnect_delay_s, then twice as long after each failure, at most
    # reconnect_max_delay_s (``reconnect_policy``): the service may be restarting, which takes a
    # few seconds.
    reconnect_attempts: int = Field(default=30, ge=0)
    reconnect_delay_s: float = Field(default=0.5, ge=0)
    reconnect_max_delay_s: float = Field(default=5.0, ge=0)

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")

    @property
    def admin_token_path(self) -> Path:
        return (self.admin_token_file or self.home.expanduser() / "admin_token").expanduser()

    def bearer_token(self) -> str | None:
        """RAMP_TOKEN, else the embedded service's admin token (None when neither exists)."""
        if self.token is not None:
            return self.token.get_secret_value()
        try:
            return self.admin_token_path.read_text().strip() or None
        except OSError:
            return None

    def reconnect_policy(self) -> RetryPolicy | None:
        """The waits before reopening a dropped stream: the project's one retry policy, from
        ``reconnect_delay_s`` doubling up to ``reconnect_max_delay_s`` (jitter 20%); None when
        ``reconnect_delay_s`` is 0 (reopen at once)."""
        if self.reconnect_delay_s == 0:
            return None
        return RetryPolicy(base_s=self.reconnect_delay_s, factor=2.0,
                           max_s=max(self.reconnect_max_delay_s, self.reconnect_delay_s), jitter=0.2)
