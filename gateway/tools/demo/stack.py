"""Everything ``igsp-gateway demo`` runs, on free loopback ports, from a temp dir.

    legacy wallet       hub88_wallet simulator (thread)     <- gateway platform face
    legacy game server  pragmatic_provider simulator (thread) -> gateway provider face callbacks
    iGSP platform       igsp_platform simulator (thread)    <- gateway provider face hooks
    gateway             ``python -m gateway serve`` (process), both faces, SQLite in the temp dir

No Redis and no configuration: keys are generated per run, the config is written to
the temp dir, and the provider face joins in when its mapping is part of this build.
With ``store_url`` (``demo --store``) the gateway uses that store instead, under a
namespace of its own (``demo-<random>``): the story's transaction ids are fixed, so on a
store shared with earlier runs they would otherwise be answered from those runs' ledger.
Its records expire after a day (``store.retention_days: 1``).
The config there is complete on its own: its mappings are copies of the shipped ones with
the ``${VAR}`` references the demo sets (simulator URLs, keys) filled in, so another
command — ``igsp-gateway chaos --config`` — can run on it from any shell.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import yaml

from gateway.resources import data_dir
from gateway.tools.serving import GatewayDidNotStart, ServeProcess, child_env
from gateway.tools.simulators import RunningServer, hub88_wallet, igsp_platform, pragmatic_provider, start_in_thread

HOOKS_PATH = "/platforms/game-provider/hooks"
PROVIDER_MAPPING = "pragmatic-provider.yaml"
WALLET_MAPPING = "hub88-wallet.yaml"


def provider_face_available() -> bool:
    """The provider face ships with its Pragmatic-style mapping; without it the demo plays one face."""
    return (data_dir("mappings") / PROVIDER_MAPPING).is_file()


def check_store_url(url: str) -> None:
    """Raise ValueError saying what is wrong with a store URL, before anything starts.

    The store's own parser judges it (``gateway.store.open_store``: the scheme, Sentinel's
    hosts and service name, the options), so the demo takes exactly what ``serve`` takes.
    """
    from gateway.store import STORE_SCHEMES, open_store

    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in STORE_SCHEMES:
        raise ValueError(f"got {shown_url(url)!r}: a store URL starts with one of "
                         f"{', '.join(s + '://' for s in STORE_SCHEMES)}")
    if scheme == "sqlite" and not url[len("sqlite://"):].startswith("/"):
        raise ValueError(f"got {url!r}: write sqlite:///path/to/file.db")
    try:
        open_store(url)  # parses only; nothing connects until open()
    except ValueError as exc:
        raise ValueError(f"{shown_url(url)}: {exc}") from None


def shown_url(url: str) -> str:
    """The URL with any password in it replaced by ``***`` (it is printed)."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{hosts}"))


@dataclass
class Credentials:
    """A partner's key pair: who may call (api_key) and the shared secret that signs."""

    partner: str
    api_key: str = field(default_factory=lambda: "demo-" + secrets.token_hex(6))
    secret: str = field(default_factory=lambda: secrets.token_hex(20))


@dataclass
class DemoStack:
    provider_face: bool = field(default_factory=provider_face_available)
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="igsp-demo-")))
    #: an iGSP game provider calling the gateway's hooks (platform face)
    provider_partner: Credentials = field(default_factory=lambda: Credentials("demo-games"))
    #: an iGSP casino platform calling the gateway's catalogue and launch (provider face)
    platform_partner: Credentials = field(default_factory=lambda: Credentials("demo-casino"))
    pp_secret: str = field(default_factory=lambda: secrets.token_hex(12))
    pp_login: str = "demo_casino"
    store_url: str | None = None  # default: SQLite in the temp dir
    namespace: str = field(default_factory=lambda: "demo-" + secrets.token_hex(4))
    wallet: RunningServer | None = None
    game_server: RunningServer | None = None
    platform: RunningServer | None = None
    gateway_url: str = ""
    internal_url: str = ""  # /metrics
    _serve: ServeProcess | None = None

    # -- addresses ----------------------------------------------------------------------------
    @property
    def hooks_url(self) -> str:
        return self.gateway_url + HOOKS_PATH

    @property
    def provider_base_url(self) -> str:
        return self.gateway_url + "/igsp/v1"

    @property
    def log_path(self) -> Path:
        return self.dir / "gateway.log"

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> DemoStack:
        try:
            self._start_simulators()
            self._start_gateway()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_simulators(self) -> None:
        private_pem, public_pem = hub88_wallet.generate_keypair()
        key_file = self.dir / "hub88-private.pem"
        key_file.write_text(private_pem)
        key_file.chmod(0o600)
        self.wallet = start_in_thread(hub88_wallet.make_app(hub88_wallet.State(), public_key_pem=public_pem))
        if self.provider_face:
            p = self.platform_partner
            self.platform = start_in_thread(igsp_platform.make_app(api_key=p.api_key, secret=p.secret))
            self.game_server = start_in_thread(pragmatic_provider.make_app(
                secret_key=self.pp_secret, secure_login=self.pp_login))

    @property
    def config_path(self) -> Path:
        return self.dir / "gateway.yaml"

    def legacy_env(self) -> dict:
        """The variables the shipped mappings read, as this run's simulators need them."""
        env = {"HUB88_WALLET_URL": self.wallet.url, "HUB88_PRIVATE_KEY": str(self.dir / "hub88-private.pem")}
        if self.provider_face:
            env.update(PP_API_URL=self.game_server.url, PP_SECRET_KEY=self.pp_secret, PP_SECURE_LOGIN=self.pp_login)
        return env

    def _own_mapping(self, name: str) -> str:
        """A copy of a shipped mapping in the temp dir with this run's variables filled in."""
        text = (data_dir("mappings") / name).read_text()
        for key, value in self.legacy_env().items():
            text = text.replace("${" + key + "}", value)
        copy = self.dir / name
        copy.write_text(text)
        copy.chmod(0o600)
        return str(copy)

    def config(self) -> dict:
        partners = [{"id": self.provider_partner.partner, "face": "platform",
                     "mapping": self._own_mapping(WALLET_MAPPING), "api_key": self.provider_partner.api_key,
                     "secrets": [self.provider_partner.secret]}]
        if self.provider_face:
            partners.append({"id": self.platform_partner.partner, "face": "provider",
                             "mapping": self._own_mapping(PROVIDER_MAPPING), "api_key": self.platform_partner.api_key,
                             "secrets": [self.platform_partner.secret], "hooks_url": self.platform.url + HOOKS_PATH})
        return {"version": 1,
                "server": {"host": "127.0.0.1", "port": 0, "drain_seconds": 1, "shutdown_grace_seconds": 0},
                "store": ({"url": self.store_url, "namespace": self.namespace, "retention_days": 1}
                          if self.store_url else {"url": f"sqlite:///{self.dir / 'gateway.db'}"}),
                "partners": partners}

    def env(self) -> dict:
        return child_env(self.legacy_env())

    def _start_gateway(self, timeout: float = 20.0) -> None:
        config_path = self.config_path
        config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        config_path.chmod(0o600)
        self._serve = ServeProcess(self.log_path)
        try:
            self._serve.start(config_path, self.env(), cwd=self.dir, timeout=timeout)
        except GatewayDidNotStart as exc:
            raise RuntimeError(str(exc)) from None
        self.gateway_url, self.internal_url = self._serve.url, self._serve.internal_url

    def log_tail(self, lines: int = 20) -> str:
        return self._serve.log_tail(lines) if self._serve is not None else ""

    def stop(self, keep_dir: bool = False) -> None:
        if self._serve is not None:
            self._serve.stop()
        for server in (self.wallet, self.game_server, self.platform):
            if server is not None:
                server.stop()
        if not keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def gateway_running(self) -> bool:
        return self._serve is not None and self._serve.running()
