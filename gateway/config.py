"""The gateway config file: server, store, security, faces and partners.

Loaded once (and again on SIGHUP); mapping paths are relative to the config file.
Every problem in the config and in every mapping it names is reported at once.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from gateway.clientip import FORWARDED_HEADERS, Network, parse_network
from gateway.engine.mapping import Mapping, load_mapping
from gateway.engine.yamlload import (
    dotted,
    env_and_schema_problems,
    interpolate_env,
    line_of,
    load_yaml,
    schema_problems,
)
from gateway.errors import ConfigError, Problem
from gateway.ops.redaction import scrub, secret_values
from gateway.ops.tracing import DEFAULT_SERVICE_NAME, EXPORTERS, PROTOCOLS, SAMPLERS, TracingSettings
from gateway.ops.tracing import resolve as resolve_tracing
from gateway.ratelimit import LOCAL, ON_STORE_ERROR, AdaptiveSettings, RateLimit
from gateway.store import STORE_SCHEMES

_SECRET = {"type": "string", "minLength": 16}
_NETWORKS = {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}}
_RATE_LIMIT = {
    "description": "Token bucket per partner (per process, or shared: rate_limits.shared): requests_per_second, "
                   "burst; null = no limit.",
    "oneOf": [
        {"type": "null"},
        {"type": "object", "additionalProperties": False, "required": ["requests_per_second"],
         "properties": {"requests_per_second": {"type": "number", "exclusiveMinimum": 0},
                        "burst": {"type": "integer", "minimum": 1}}},
    ],
}

CONFIG_SCHEMA: dict = {
    "type": "object",
    "additionalProperties": False,
    "patternProperties": {"^x-": {}},
    "required": ["version", "partners"],
    "properties": {
        "version": {"const": 1},
        "server": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "host": {"type": "string", "default": "127.0.0.1"},
                "port": {"type": "integer", "minimum": 0, "maximum": 65535, "default": 8080,
                         "description": "The public port: the iGSP API, the legacy callbacks, /healthz and /readyz."},
                "internal_port": {"type": "integer", "minimum": 0, "maximum": 65535, "default": 8081,
                                  "description": "The internal port: /metrics, /admin/, /healthz and /readyz (never "
                                                 "the API). Default 8081, or 0 (any free port) when port is 0."},
                "workers": {"type": "integer", "minimum": 1, "maximum": 64, "default": 1},
                "max_body_bytes": {"type": "integer", "minimum": 256, "default": 65536},
                "max_header_bytes": {"type": "integer", "minimum": 1024, "maximum": 65536, "default": 8190,
                                     "description": "Longest request line or header field; longer gets 4xx."},
                "max_header_fields": {"type": "integer", "minimum": 16, "maximum": 1024, "default": 128,
                                      "description": "Most header fields in a request; more gets 4xx."},
                "read_timeout_seconds": {"type": "number", "exclusiveMinimum": 0, "default": 60,
                                         "description": "Longest a client may take to send a request head "
                                                        "(from connecting, or from the previous answer: an idle "
                                                        "keep-alive connection is closed then) and, again, its "
                                                        "body."},
                "shutdown_grace_seconds": {"type": "number", "minimum": 0, "default": 5,
                                           "description": "On SIGTERM: /readyz answers 503 draining while the "
                                                          "gateway keeps serving this long, so load balancers stop "
                                                          "sending it traffic; then it stops accepting and drains."},
                "drain_seconds": {"type": "number", "minimum": 0, "default": 20,
                                  "description": "After the grace: how long in-flight requests and the current "
                                                 "queue delivery may take to finish."},
                "access_log": {"type": "boolean", "default": True},
                "probe_upstreams": {"type": "boolean", "default": False,
                                    "description": "/readyz also opens a TCP connection to every upstream."},
                "watch_seconds": {"type": "number", "minimum": 0, "default": 0,
                                  "description": "Reload when the config or a mapping file changes (0: SIGHUP only)."},
                "trusted_proxies": {**_NETWORKS, "minItems": 0,
                                    "description": "Networks (CIDR) of the proxies in front of the gateway (an "
                                                   "ingress controller, a load balancer): when the TCP peer is one "
                                                   "of them, the client address is the rightmost untrusted hop of "
                                                   "forwarded_header. Otherwise the header is never read."},
                "forwarded_header": {"enum": list(FORWARDED_HEADERS), "default": "X-Forwarded-For",
                                     "description": "The header the trusted proxies maintain (only that one is "
                                                    "read): X-Forwarded-For, or RFC 7239 Forwarded."},
            },
        },
        "store": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "url": {"type": "string", "pattern": f"^({'|'.join(map(re.escape, STORE_SCHEMES))})://.*$"},
                "retention_days": {"type": "number", "exclusiveMinimum": 0, "default": 30},
                "namespace": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$", "default": "igsp",
                              "description": "Redis key prefix: gateways sharing a Redis with the same "
                                             "namespace share ledger and queue."},
                "username": {"type": "string", "minLength": 1,
                             "description": "Redis ACL user (AUTH username password); instead of one in the URL."},
                "password": {"type": "string", "minLength": 1,
                             "description": "Redis password, as ${ENV} (from a Secret); instead of one in the URL."},
                "password_file": {"type": "string", "minLength": 1,
                                  "description": "File holding the Redis password (a mounted Secret), read at load; "
                                                 "relative to the config file."},
                "sentinel_auth": {"type": "boolean", "default": False,
                                  "description": "Behind Sentinel: log in to the sentinels too, with the same user "
                                                 "and password as the Redis servers (sentinels with requirepass)."},
                "tls": {
                    "type": "object", "additionalProperties": False,
                    "description": "TLS to Redis (rediss://, rediss+sentinel:// to the sentinels and the servers, "
                                   "rediss+cluster://): on, and the CA that signed the servers' certificates.",
                    "properties": {
                        "enabled": {"type": "boolean", "default": False},
                        "ca_file": {"type": "string", "minLength": 1,
                                    "description": "PEM bundle of the CA(s) to trust (default: the system's); "
                                                   "relative to the config file."},
                    },
                },
            },
        },
        "queue": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "lease_seconds": {"type": "number", "exclusiveMinimum": 0, "default": 30,
                                  "description": "How long a delivery may run before another worker takes it over "
                                                 "(the same on every replica)."},
                "poll_seconds": {"type": "number", "exclusiveMinimum": 0, "default": 0.5},
            },
        },
        "security": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "signature_window_seconds": {"type": "integer", "minimum": 1, "maximum": 3600, "default": 300},
                "replay_protection": {
                    "type": "boolean", "default": False,
                    "description": "Strict mode, for every partner that does not say otherwise: a signature "
                                   "is accepted once on balance hooks and launches. Money hooks are never "
                                   "refused as replays (the ledger answers them)."},
                "rate_limit": _RATE_LIMIT,
            },
        },
        "rate_limits": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "shared": {"type": "boolean", "default": False,
                           "description": "Every process on the store takes from one bucket per partner, so "
                                          "N replicas together allow the configured rate (not N times it)."},
                "on_store_error": {"enum": list(ON_STORE_ERROR), "default": LOCAL,
                                   "description": "A shared limit while the store cannot answer: local (this "
                                                  "process's own bucket), allow (no limit) or refuse (503)."},
            },
        },
        "concurrency": {
            "type": "object",
            "additionalProperties": False,
            "description": "Shed load early: requests in progress per partner and per legacy API (mapping), "
                           "per process; one more is answered 503 with Retry-After before any ledger or "
                           "legacy work.",
            "properties": {
                "per_partner": {"type": ["integer", "null"], "minimum": 1,
                                "description": "Default for every partner (partners[].max_concurrent); null: none."},
                "per_upstream": {"type": ["integer", "null"], "minimum": 1,
                                 "description": "Default for every legacy API (mapping name); null: none."},
                "upstreams": {"type": "object", "additionalProperties": {"type": ["integer", "null"], "minimum": 1},
                              "description": "A mapping name's own limit (null: none)."},
                "retry_after_seconds": {"type": "integer", "minimum": 1, "maximum": 3600, "default": 1},
                "adaptive": {
                    "type": ["object", "null"], "additionalProperties": False, "required": ["target_ms"],
                    "description": "Each partner's share of a legacy API follows the latency of its calls, "
                                   "between min and the API's configured limit (per_upstream or "
                                   "upstreams.<name>: the ceiling; APIs without one do not adapt). A window "
                                   "of calls (5 or more within half a second to five seconds) whose mean is above "
                                   "target_ms and more than twice the fastest successful call of the last 20 "
                                   "windows (queueing) "
                                   "shrinks it in proportion; any other grows it by its square root. null: fixed.",
                    "properties": {
                        "target_ms": {"type": "number", "exclusiveMinimum": 0,
                                      "description": "The legacy call latency to keep (ms): well under the "
                                                     "mapping's timeout and the callers'."},
                        "min": {"type": "integer", "minimum": 1, "default": 1,
                                "description": "The limit never goes below this."},
                    },
                },
                "early_shedding": {"type": "boolean", "default": False,
                                   "description": "Answer a request to be shed in a lean llhttp front (httptools) "
                                                  "before aiohttp handles it (~20-50 us of CPU instead of ~120-180), so a gateway "
                                                  "driven past its capacity keeps serving what it admits "
                                                  "(gateway/shed_front.py). Off: aiohttp answers every request."},
            },
        },
        "admin": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"token": {"type": "string"}},
        },
        "logging": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"level": {"enum": ["debug", "info", "warning", "error"], "default": "info"}},
        },
        "tracing": {
            "type": "object",
            "additionalProperties": False,
            "description": "OpenTelemetry traces (off by default). What this section leaves unset comes from the "
                           "standard OTEL_* environment variables.",
            "properties": {
                "enabled": {"type": "boolean",
                            "description": "Unset: on when an exporter is named here or in OTEL_TRACES_EXPORTER. "
                                           "OTEL_SDK_DISABLED=true always turns tracing off."},
                "exporter": {"enum": list(EXPORTERS), "default": "otlp"},
                "endpoint": {"type": "string", "pattern": "^https?://.*$",
                             "description": "The collector's OTLP base URL (/v1/traces is appended for "
                                            "http/protobuf), like OTEL_EXPORTER_OTLP_ENDPOINT."},
                "protocol": {"enum": list(PROTOCOLS), "default": "http/protobuf"},
                "service_name": {"type": "string", "minLength": 1, "default": DEFAULT_SERVICE_NAME},
                "sampler": {"enum": list(SAMPLERS), "default": "parentbased_always_on"},
                "sampler_arg": {"type": "number", "minimum": 0, "maximum": 1, "default": 1,
                                "description": "The ratio of the traceidratio samplers."},
                "headers": {"type": "object", "additionalProperties": {"type": "string"},
                            "description": "Headers sent to the collector (e.g. an auth token: use ${ENV}); "
                                           "redacted from logs."},
            },
        },
        "currencies": {
            "type": "object",
            "description": "Extra currencies and their exponent, e.g. {BTC: 8}. A code is what a hook's "
                           "currency can be: three upper-case letters.",
            "propertyNames": {"pattern": "^[A-Z]{3}$"},
            "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 18},
        },
        "platform_face": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"hooks_path": {"type": "string", "pattern": "^/.*$"}},
        },
        "provider_face": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"mount": {"type": "string", "pattern": "^/.*$"}},
        },
        "partners": {
            # Empty is allowed so a fresh deployment starts (and reports not ready on /readyz).
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["id", "face", "mapping", "api_key", "secrets"],
                "properties": {
                    "id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
                    "face": {"enum": ["platform", "provider"]},
                    "mapping": {"type": "string"},
                    "api_key": {"type": "string", "minLength": 8},
                    "secrets": {"type": "array", "minItems": 1, "maxItems": 2, "items": _SECRET},
                    "hooks_url": {"type": "string", "pattern": "^https?://.*$"},
                    "rate_limit": _RATE_LIMIT,
                    "max_concurrent": {"type": ["integer", "null"], "minimum": 1,
                                       "description": "Requests of this partner in progress per process "
                                                      "(concurrency.per_partner); null: none."},
                    "replay_protection": {"type": "boolean",
                                          "description": "This partner's strict mode (security.replay_protection)."},
                    "partial_refunds": {"type": "boolean", "default": False,
                                        "description": "A refund may return less than its bet (never more); "
                                                       "otherwise its amount must equal the bet's."},
                    "allowed_ips": {**_NETWORKS,
                                    "description": "Addresses or CIDR networks (IPv4, IPv6) this partner may call "
                                                   "from; any other gets 403 forbidden, before the signature is "
                                                   "checked. Unset: any address."},
                },
            },
        },
    },
}


@dataclass(frozen=True)
class Partner:
    """One integration: who calls (api_key/secrets), which face, which legacy mapping."""

    id: str
    face: str
    api_key: str
    secrets: tuple[bytes, ...]
    mapping: Mapping
    hooks_url: str | None = None
    rate_limit: RateLimit | None = None
    #: Strict mode: a signature is accepted once on non-money requests (balance, launch).
    replay_protection: bool = False
    partial_refunds: bool = False
    max_concurrent: int | None = None  # requests in progress per process; None: no limit
    #: Networks this partner may call from (None: any address).
    allowed_ips: tuple[Network, ...] | None = None


@dataclass(frozen=True)
class Config:
    file: str
    host: str = "127.0.0.1"
    port: int = 8080
    internal_port: int = 8081
    workers: int = 1
    max_body_bytes: int = 65536
    max_header_bytes: int = 8190
    max_header_fields: int = 128
    read_timeout: float = 60.0
    drain_seconds: float = 20.0
    shutdown_grace: float = 5.0
    access_log: bool = True
    probe_upstreams: bool = False
    watch_seconds: float = 0.0
    #: The store URL with the ``store`` section's username, password and TLS folded in (it
    #: may hold the password: never log it; ``secrets`` lists the password for redaction).
    store_url: str = "sqlite:///igsp-gateway.db"
    store_password: str | None = None
    retention_seconds: float = 30 * 86400
    signature_window: int = 300
    admin_token: str | None = None
    log_level: str = "info"
    currencies: dict = field(default_factory=dict)
    hooks_path: str = "/platforms/game-provider/hooks"
    provider_mount: str = "/igsp/v1"
    partners: tuple[Partner, ...] = ()
    raw: Any = None
    store_namespace: str = "igsp"
    queue_lease_seconds: float = 30.0
    queue_poll_seconds: float = 0.5
    #: ``rate_limits``: limits shared through the store, and what they do when it is out.
    rate_limits_shared: bool = False
    rate_limits_on_store_error: str = LOCAL
    #: ``concurrency``: a mapping name's limit of requests in progress (None: none), and the
    #: Retry-After of a request shed for it or for its partner's (``Partner.max_concurrent``).
    upstream_concurrency: dict = field(default_factory=dict)
    concurrency_retry_after: int = 1
    #: ``concurrency.adaptive``: the legacy APIs' limits follow their latency (None: fixed).
    concurrency_adaptive: AdaptiveSettings | None = None
    #: ``concurrency.early_shedding``: shed requests are answered by gateway/shed_front.py.
    early_shedding: bool = False
    trusted_proxies: tuple[Network, ...] = ()
    forwarded_header: str = "X-Forwarded-For"
    tracing: TracingSettings = field(default_factory=TracingSettings)

    @property
    def secrets(self) -> list[str]:
        """Every secret value the config holds, for log redaction.

        Partner secrets, the admin token, and whatever sits under a secret-named key in
        a mapping (its ``secrets``, an adapter's ``secret`` or ``private_key``, with the
        key file's content). API keys are public ids (PROTOCOL.md), not secrets.
        """
        found = [s.decode() for p in self.partners for s in p.secrets]
        found += [v for m in {p.mapping.file: p.mapping for p in self.partners}.values()
                  for v in secret_values(m.raw)]
        if self.admin_token:
            found.append(self.admin_token)
        if self.store_password:
            found += [self.store_password, quote(self.store_password, safe="")]
        found += [value for _, value in self.tracing.headers]
        return [s for s in found if s]

    @property
    def files(self) -> list[str]:
        """The config file and every mapping file it names (watched for changes)."""
        return [self.file, *dict.fromkeys(p.mapping.file for p in self.partners)]


def _drop_empty_secrets(data: dict) -> None:
    """``secrets: ["${NEW}", "${OLD:-}"]``: an unset previous secret means "not rotating"."""
    for partner in data.get("partners") or []:
        if isinstance(partner, dict) and isinstance(partner.get("secrets"), list):
            kept = [s for s in partner["secrets"] if s != ""]
            if kept:
                partner["secrets"][:] = kept


def load_config(path: str | Path, env: dict | None = None) -> Config:
    """Load and check a config and all its mappings; raise ConfigError listing every problem."""
    file = str(path)
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError([Problem(file, 1, "", "the config must be a YAML mapping (key: value)")])
    problems = env_and_schema_problems(data, CONFIG_SCHEMA, file, env, prepare=_drop_empty_secrets)
    if problems:
        raise scrub(ConfigError(problems + _mapping_problems(data, file, env)), secret_values(data))

    base = Path(file).resolve().parent
    default_limit = (data.get("security") or {}).get("rate_limit")
    concurrency = data.get("concurrency") or {}
    default_strict = (data.get("security") or {}).get("replay_protection", False)
    partners, seen_ids, seen_keys, loaded = [], set(), set(), {}
    for index, spec in enumerate(data["partners"]):
        where = ("partners", index)
        if spec["id"] in seen_ids:
            problems.append(Problem(file, line_of(data, where + ("id",)), f"partners[{index}].id",
                                    f"duplicate partner id {spec['id']!r}"))
        if spec["api_key"] in seen_keys:
            problems.append(Problem(file, line_of(data, where + ("api_key",)), f"partners[{index}].api_key",
                                    "api_key is used by another partner"))
        seen_ids.add(spec["id"])
        seen_keys.add(spec["api_key"])
        mapping_path = (base / spec["mapping"]).resolve()
        try:
            mapping = loaded.get(mapping_path) or load_mapping(mapping_path, env)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        loaded[mapping_path] = mapping
        if mapping.face != spec["face"]:
            problems.append(Problem(file, line_of(data, where + ("mapping",)), f"partners[{index}].mapping",
                                    f"mapping {mapping.name!r} is for the {mapping.face} face, partner is {spec['face']}"))
        refund_op = mapping.operations.get("refund")
        if spec.get("partial_refunds") and refund_op is not None and not {"amount", "legacy_amount"} & refund_op.inputs:
            problems.append(Problem(file, line_of(data, where + ("partial_refunds",)), f"partners[{index}].partial_refunds",
                                    f"mapping {mapping.name!r} sends no amount with a refund (a rollback returns the "
                                    "whole bet), so a partial refund would refund everything"))
        if spec["face"] == "provider" and "hooks_url" not in spec:
            problems.append(Problem(file, line_of(data, where), f"partners[{index}]",
                                    "a provider-face partner needs hooks_url (the platform's iGSP hooks URL)"))
        allowed_ips = (_networks(data, file, where + ("allowed_ips",), problems)
                       if "allowed_ips" in spec else None)
        partners.append(Partner(spec["id"], spec["face"], spec["api_key"],
                                tuple(s.encode() for s in spec["secrets"]), mapping, spec.get("hooks_url"),
                                RateLimit.parse(spec["rate_limit"] if "rate_limit" in spec else default_limit),
                                spec.get("replay_protection", default_strict), spec.get("partial_refunds", False),
                                spec.get("max_concurrent", concurrency.get("per_partner")), allowed_ips))
    trusted_proxies = _networks(data, file, ("server", "trusted_proxies"), problems, trusting=True)
    tracing_settings = _tracing(data, file, os.environ if env is None else env, problems)
    problems.extend(_lease_problems(data, file, partners))
    problems.extend(_port_problems(data, file))
    _store_url(data, file, base, problems)
    # Each legacy API's limit (mapping name -> limit or None): the ceiling of an adaptive one.
    upstream_limits = {p.mapping.name: (concurrency.get("upstreams") or {}).get(
        p.mapping.name, concurrency.get("per_upstream")) for p in partners}
    adaptive = concurrency.get("adaptive")
    if adaptive and not any(upstream_limits.values()):
        problems.append(Problem(file, line_of(data, ("concurrency", "adaptive")), "concurrency.adaptive",
                                "an adaptive limit needs a legacy API limit as its ceiling",
                                hint="set concurrency.per_upstream (or upstreams.<mapping name>)"))
    adapting = {p.mapping.name: p.mapping for p in partners if upstream_limits[p.mapping.name]}
    for mapping in adapting.values() if adaptive else ():
        # A call that times out takes its timeout: a target at or above it is never exceeded.
        # (Each step of a multi-step operation is a call of its own, with its own timeout.)
        fastest = min([mapping.timeout] + [step.timeout for op in mapping.operations.values()
                                           for step in (op.steps or (op,)) if step.timeout])
        if adaptive["target_ms"] / 1000 >= fastest:
            problems.append(Problem(file, line_of(data, ("concurrency", "adaptive", "target_ms")),
                                    "concurrency.adaptive.target_ms",
                                    f"must be below the legacy timeout of mapping {mapping.name} ({fastest:g} s): "
                                    "a call that times out would never be above it",
                                    hint="a third of the timeout or less leaves room for the queue"))
    for name in (concurrency.get("upstreams") or {}).keys() - {p.mapping.name for p in partners}:
        problems.append(Problem(file, line_of(data, ("concurrency", "upstreams", name)), f"concurrency.upstreams.{name}",
                                "no partner uses a mapping of that name",
                                hint=f"mappings in use: {', '.join(sorted({p.mapping.name for p in partners})) or 'none'}"))
    if problems:
        raise scrub(ConfigError(problems), secret_values(data))

    server, store, security = data.get("server") or {}, data.get("store") or {}, data.get("security") or {}
    store_url, store_password = _store_url(data, file, base, problems)
    if problems:
        raise scrub(ConfigError(problems), secret_values(data))
    return Config(
        file=file,
        host=server.get("host", "127.0.0.1"),
        port=server.get("port", 8080),
        internal_port=server.get("internal_port", 0 if server.get("port", 8080) == 0 else 8081),
        workers=server.get("workers", 1),
        max_body_bytes=server.get("max_body_bytes", 65536),
        max_header_bytes=server.get("max_header_bytes", 8190),
        max_header_fields=server.get("max_header_fields", 128),
        read_timeout=float(server.get("read_timeout_seconds", 60)),
        drain_seconds=float(server.get("drain_seconds", 20)),
        shutdown_grace=float(server.get("shutdown_grace_seconds", 5)),
        access_log=server.get("access_log", True),
        probe_upstreams=server.get("probe_upstreams", False),
        watch_seconds=float(server.get("watch_seconds", 0)),
        store_url=store_url,
        store_password=store_password,
        retention_seconds=float(store.get("retention_days", 30)) * 86400,
        signature_window=security.get("signature_window_seconds", 300),
        admin_token=(data.get("admin") or {}).get("token") or None,
        log_level=(data.get("logging") or {}).get("level", "info"),
        currencies=dict(data.get("currencies") or {}),
        hooks_path=(data.get("platform_face") or {}).get("hooks_path", "/platforms/game-provider/hooks"),
        provider_mount=(data.get("provider_face") or {}).get("mount", "/igsp/v1").rstrip("/"),
        partners=tuple(partners),
        raw=data,
        store_namespace=store.get("namespace", "igsp"),
        queue_lease_seconds=float((data.get("queue") or {}).get("lease_seconds", 30)),
        queue_poll_seconds=float((data.get("queue") or {}).get("poll_seconds", 0.5)),
        rate_limits_shared=(data.get("rate_limits") or {}).get("shared", False),
        rate_limits_on_store_error=(data.get("rate_limits") or {}).get("on_store_error", LOCAL),
        upstream_concurrency=upstream_limits,
        concurrency_retry_after=concurrency.get("retry_after_seconds", 1),
        concurrency_adaptive=AdaptiveSettings.parse(adaptive),
        early_shedding=concurrency.get("early_shedding", False),
        trusted_proxies=trusted_proxies,
        forwarded_header=server.get("forwarded_header", "X-Forwarded-For"),
        tracing=tracing_settings,
    )


def _port_problems(data: dict, file: str) -> list[Problem]:
    """/metrics and /admin/ must never share the public port."""
    server = data.get("server") or {}
    port = server.get("port", 8080)
    if port != 0 and server.get("internal_port", 8081) == port:
        where = "internal_port" if "internal_port" in server else "port"
        return [Problem(file, line_of(data, ("server", where)), f"server.{where}",
                        f"got {port}: the public port and the internal port (/metrics, /admin/) must differ",
                        hint="give server.internal_port another port")]
    return []


def _tracing(data: dict, file: str, environ, problems: list[Problem]) -> TracingSettings:
    """The ``tracing`` section completed from the ``OTEL_*`` variables (gateway/ops/tracing.py)."""
    settings, found = resolve_tracing(data.get("tracing"), environ)
    for problem in found:
        if problem.from_env:
            problems.append(Problem(file, None, "tracing", f"environment variable {problem.where}: {problem}"))
        else:
            where = problem.where.split(".")
            problems.append(Problem(file, line_of(data, tuple(where)), problem.where, str(problem)))
    return settings


def _networks(data: dict, file: str, where: tuple, problems: list[Problem], trusting: bool = False) -> tuple:
    """The CIDR networks listed at ``where`` (a problem for each one that is not)."""
    node: Any = data
    for part in where:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return ()
    found = []
    for index, text in enumerate(node or []):
        field_name = dotted(where + (index,))
        line = line_of(data, where + (index,))
        try:
            network = parse_network(text)
        except ValueError as exc:
            problems.append(Problem(file, line, field_name, str(exc),
                                    hint="write an address (203.0.113.7, 2001:db8::7) or a network "
                                         "(203.0.113.0/24, 2001:db8::/32)"))
            continue
        if trusting and network.prefixlen == 0:
            problems.append(Problem(file, line, field_name,
                                    f"{network} trusts every address: any client could then choose its own "
                                    "address by sending a forwarding header",
                                    hint="list only your ingress controller's or load balancer's networks"))
            continue
        found.append(network)
    return tuple(found)



def _lease_problems(data: dict, file: str, partners: list[Partner]) -> list[Problem]:
    """A queued delivery must end well inside its lease, or a second worker would take it over
    while the first is still talking to the legacy side (and pay a non-idempotent wallet twice)."""
    lease = float((data.get("queue") or {}).get("lease_seconds", 30))
    slowest = max(((max([p.mapping.timeout] + [op.timeout or 0 for op in p.mapping.operations.values()]), p.mapping.name)
                   for p in partners), default=(0.0, ""))
    if lease > 2 * slowest[0]:
        return []
    return [Problem(file, line_of(data, ("queue", "lease_seconds")), "queue.lease_seconds",
                    f"got {lease:g}: a lease must be longer than twice the slowest legacy timeout "
                    f"({slowest[0]:g} s in mapping {slowest[1]!r})", hint=f"use at least {2 * slowest[0] + 1:g}")]


class StoreSettings(NamedTuple):
    """The ``store`` section of a config: what operator commands need."""

    url: str
    namespace: str
    retention_seconds: float


def load_store_settings(path: str | Path, env: dict | None = None) -> StoreSettings:
    """The store section of a config without loading its mappings (operator commands)."""
    file = str(path)
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError([Problem(file, 1, "", "the config must be a YAML mapping (key: value)")])
    store = data.get("store") or {}
    if isinstance(store, dict):
        interpolate_env(store, file, env)
    problems = schema_problems(store, CONFIG_SCHEMA["properties"]["store"], file, prefix=("store",))
    if not problems:
        url, password = _store_url(data, file, Path(file).resolve().parent, problems)
    if problems:
        raise scrub(ConfigError(problems), [v for v in (store.get("password"),) if isinstance(v, str)])
    return StoreSettings(url, store.get("namespace", "igsp"), float(store.get("retention_days", 30)) * 86400)


#: Store URL schemes that take the ``store`` section's TLS settings, and their TLS form.
_TLS_SCHEMES = {"redis": "rediss", "rediss": "rediss", "redis+sentinel": "rediss+sentinel",
                "rediss+sentinel": "rediss+sentinel", "redis+cluster": "rediss+cluster",
                "rediss+cluster": "rediss+cluster"}


def _store_url(data: dict, file: str, base: Path, problems: list[Problem]) -> tuple[str, str | None]:
    """``store.url`` with ``username``, ``password``/``password_file`` and ``tls`` folded in.

    The URL is what the store takes (gateway/store); the separate fields exist so a
    password never has to be written into the URL — where a ConfigMap would hold it, and
    where a ``@`` or ``:`` in it would need percent-encoding — and so a chart can point at
    a mounted Secret. Returns (url, password); a problem names the field.
    """
    store = data.get("store") or {}
    url = store.get("url", "sqlite:///igsp-gateway.db")
    scheme = url.split("://", 1)[0]
    earlier = len(problems)
    if scheme == "sqlite":
        for name in ("username", "password", "password_file", "tls", "sentinel_auth"):
            if name in store:
                problems.append(Problem(file, line_of(data, ("store", name)), f"store.{name}",
                                        "is for a Redis store; store.url is SQLite"))
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            # A relative SQLite path is relative to the config file, like mapping paths.
            url = "sqlite:///" + str(base / url[len("sqlite:///"):])
        return url, None
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    password = store.get("password")
    if "password_file" in store:
        where = ("store", "password_file")
        if password is not None:
            problems.append(Problem(file, line_of(data, where), "store.password_file",
                                    "give store.password or store.password_file, not both"))
        try:
            password = (base / store["password_file"]).read_text().rstrip("\r\n")
        except OSError as exc:
            problems.append(Problem(file, line_of(data, where), "store.password_file",
                                    f"cannot read {store['password_file']!r}: {exc.strerror or exc}"))
            password = None
        else:
            if not password:
                problems.append(Problem(file, line_of(data, where), "store.password_file",
                                        f"{store['password_file']!r} is empty"))
    if (password is not None or "username" in store) and at:
        field_name = "password" if password is not None else "username"
        problems.append(Problem(file, line_of(data, ("store", field_name)), f"store.{field_name}",
                                "store.url already has a user or password: give them in one place"))
    elif password is not None or "username" in store:
        userinfo = quote(store.get("username", ""), safe="") + (
            ":" + quote(password, safe="") if password is not None else "")
        at = "@"
    tls = store.get("tls") or {}
    query = parse_qsl(parts.query, keep_blank_values=True)
    if store.get("sentinel_auth"):
        where = ("store", "sentinel_auth")
        if not scheme.endswith("+sentinel"):
            problems.append(Problem(file, line_of(data, where), "store.sentinel_auth",
                                    f"is for Redis behind Sentinel; store.url is {scheme}://"))
        elif password is None and not at:
            problems.append(Problem(file, line_of(data, where), "store.sentinel_auth",
                                    "logs in to the sentinels with the Redis password: give store.password "
                                    "or store.password_file"))
        elif any(name == "sentinel_auth" for name, _ in query):
            problems.append(Problem(file, line_of(data, where), "store.sentinel_auth",
                                    "store.url already has sentinel_auth: say it in one place"))
        else:
            query.append(("sentinel_auth", "yes"))
    if tls.get("enabled"):
        if scheme not in _TLS_SCHEMES:
            problems.append(Problem(file, line_of(data, ("store", "tls", "enabled")), "store.tls.enabled",
                                    f"the {scheme}:// store does not take TLS settings",
                                    hint="use a redis://, redis+sentinel:// or redis+cluster:// URL"))
        else:
            scheme = _TLS_SCHEMES[scheme]
            if "ca_file" in tls:
                ca = base / tls["ca_file"]
                if any(name == "ssl_ca_certs" for name, _ in query):
                    problems.append(Problem(file, line_of(data, ("store", "tls", "ca_file")), "store.tls.ca_file",
                                            "store.url already has ssl_ca_certs: give the CA in one place"))
                elif not ca.is_file():
                    problems.append(Problem(file, line_of(data, ("store", "tls", "ca_file")), "store.tls.ca_file",
                                            f"no such file: {tls['ca_file']!r}"))
                query.append(("ssl_ca_certs", str(ca)))
    elif "ca_file" in tls:
        problems.append(Problem(file, line_of(data, ("store", "tls", "ca_file")), "store.tls.ca_file",
                                "is set but store.tls.enabled is not true"))
    elif tls.get("enabled") is False and scheme.startswith("rediss"):
        problems.append(Problem(file, line_of(data, ("store", "tls", "enabled")), "store.tls.enabled",
                                f"is false but store.url is {scheme}:// (TLS): say one thing",
                                hint="drop store.tls, or write the URL without the s (redis…://)"))
    netloc = f"{userinfo}{at}{hosts}"
    url = urlunsplit(parts._replace(scheme=scheme, netloc=netloc, query=urlencode(query)))
    if len(problems) == earlier and scheme in _TLS_SCHEMES:
        from gateway.store.redis import parse_url

        try:
            parse_url(url)  # what the store will say at open, said now, naming the field
        except ValueError as exc:
            problems.append(Problem(file, line_of(data, ("store", "url")), "store.url", str(exc)))
    return url, password


def _mapping_problems(data: dict, file: str, env: dict | None) -> list:
    """The problems of every mapping a (broken) config names, so one run reports them all."""
    problems, seen = [], set()
    base = Path(file).resolve().parent
    partners = data.get("partners")
    for spec in partners if isinstance(partners, list) else []:
        name = spec.get("mapping") if isinstance(spec, dict) else None
        if not isinstance(name, str) or not name or (base / name).resolve() in seen:
            continue
        seen.add((base / name).resolve())
        try:
            load_mapping(base / name, env)
        except ConfigError as exc:
            problems.extend(exc.problems)
    return problems
