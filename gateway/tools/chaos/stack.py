"""chaos's own gateway: the integrator's config, pointed through the fault proxy.

The gateway under test is a real ``igsp-gateway serve`` process started from a copy of
the given config with only what chaos needs changed, so what is proven is the
integrator's mapping and partner settings, not a look-alike:

- only the chosen partner, its mapping copied with ``upstream.base_url`` pointing at the
  proxy (same path prefix) and short queue backoffs, so redeliveries and compensating
  rollbacks happen within the run;
- its own SQLite store in a temp dir: the operator's ledger and queue are never touched;
- loopback ports picked by the system, a random admin token (chaos reads the queue and
  the dead letters through ``/admin/``), a short queue poll, no rate limits or address
  allow-lists (chaos calls from 127.0.0.1 as fast as it needs).

``${VAR}`` references are left in the copies: the gateway resolves them from the same
environment chaos runs in, and the working directory stays the caller's, so relative
key files resolve as they do for ``serve``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from gateway.config import Partner, load_config
from gateway.errors import ConfigError
from gateway.tools.serving import GatewayDidNotStart, ServeProcess, child_env


class ChaosSetupError(Exception):
    """Chaos cannot run against this config (said plainly; nothing was sent anywhere)."""


@dataclass
class Target:
    """The partner under test, as the loaded config describes it."""

    config_file: Path
    partner: Partner
    hooks_path: str
    raw_config: dict
    raw_mapping: dict

    @property
    def mapping(self):
        return self.partner.mapping

    @property
    def timeout(self) -> float:
        """The longest the gateway waits for one legacy call of this mapping."""
        ops = self.mapping.operations.values()
        return max([self.mapping.timeout] + [op.timeout or 0 for op in ops])

    @property
    def origin(self) -> str:
        parts = urlsplit(self.mapping.base_url)
        return f"{parts.scheme}://{parts.netloc}"


def load_target(config_file: str, partner_id: str) -> Target:
    """Load and check the config (every problem, as ``validate`` says it); find the partner."""
    path = Path(config_file)
    config = load_config(path)
    partner = next((p for p in config.partners if p.id == partner_id), None)
    if partner is None:
        raise ChaosSetupError(f"unknown partner {partner_id!r}; configured: "
                              f"{', '.join(p.id for p in config.partners)}")
    if partner.face != "platform":
        raise ChaosSetupError(f"partner {partner_id!r} is on the {partner.face} face: chaos proves wallet "
                              "mappings (platform face), whose legacy wallet it can read the balance of")
    if "balance" not in partner.mapping.operations:
        raise ChaosSetupError(f"mapping {partner.mapping.name!r} has no balance operation to reconcile with")
    if urlsplit(partner.mapping.base_url).scheme not in ("http", "https"):
        raise ChaosSetupError(f"mapping {partner.mapping.name!r}: upstream.base_url must be an http(s) URL")
    raw_config = yaml.safe_load(path.read_text())
    raw_mapping = yaml.safe_load(Path(partner.mapping.file).read_text())
    return Target(path, partner, config.hooks_path, raw_config, raw_mapping)


def chaos_mapping(target: Target, proxy_url: str) -> dict:
    mapping = dict(target.raw_mapping)
    upstream = dict(mapping["upstream"])
    upstream["base_url"] = proxy_url + urlsplit(target.mapping.base_url).path
    mapping["upstream"] = upstream
    backoff = dict(mapping.get("queue") or {})
    backoff.update(backoff_initial=0.2, backoff_max=1.0)
    mapping["queue"] = backoff
    return mapping


def chaos_config(target: Target, mapping_file: Path, store_file: Path, admin_token: str) -> dict:
    raw = target.raw_config
    spec = next(p for p in raw["partners"] if p.get("id") == target.partner.id)
    spec = {k: v for k, v in spec.items() if k not in ("rate_limit", "allowed_ips", "max_concurrent")}
    spec["mapping"] = str(mapping_file)
    config = {"version": 1,
              "server": {"host": "127.0.0.1", "port": 0, "internal_port": 0, "workers": 1,
                         "shutdown_grace_seconds": 0, "drain_seconds": 2},
              "store": {"url": f"sqlite:///{store_file}"},
              "queue": {"lease_seconds": 2 * target.timeout + 2, "poll_seconds": 0.1},
              "admin": {"token": admin_token},
              "partners": [spec]}
    for key in ("currencies", "platform_face", "logging"):
        if key in raw:
            config[key] = raw[key]
    security = {k: v for k, v in (raw.get("security") or {}).items() if k != "rate_limit"}
    if security:
        config["security"] = security
    return config


class ChaosGateway:
    """An ``igsp-gateway serve`` process on chaos's copy of the config."""

    def __init__(self, target: Target, proxy_url: str, workdir: Path) -> None:
        self.target, self.dir = target, workdir
        self.admin_token = secrets.token_hex(16)
        self.url = self.internal_url = ""
        self.process = ServeProcess(workdir / "gateway.log")
        mapping_file = workdir / "mapping.yaml"
        mapping_file.write_text(yaml.safe_dump(chaos_mapping(target, proxy_url), sort_keys=False))
        self.config_file = workdir / "gateway.yaml"
        self.config_file.write_text(yaml.safe_dump(
            chaos_config(target, mapping_file, workdir / "gateway.db", self.admin_token), sort_keys=False))
        self.config_file.chmod(0o600)

    @property
    def log_path(self) -> Path:
        return self.dir / "gateway.log"

    def check(self) -> None:
        """The copy must load as the original did (a problem here is chaos's, said as such)."""
        try:
            load_config(self.config_file)
        except ConfigError as exc:
            raise ChaosSetupError(f"chaos's copy of the config does not load:\n{exc}") from None

    def start(self, timeout: float = 30.0) -> None:
        try:
            self.process.start(self.config_file, child_env(), timeout=timeout)
        except GatewayDidNotStart as exc:
            raise ChaosSetupError(str(exc)) from None
        self.url, self.internal_url = self.process.url, self.process.internal_url

    def running(self) -> bool:
        return self.process.running()

    def log_tail(self, lines: int = 20) -> str:
        return self.process.log_tail(lines)

    def stop(self) -> None:
        self.process.stop()
