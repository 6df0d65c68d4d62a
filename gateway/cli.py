"""``igsp-gateway``: serve, validate, sign (and the operator commands added beside them).

Commands import the request path only when they run: ``serve`` must set the Prometheus
multiprocess directory before ``prometheus_client`` is first imported (gateway/server.py),
and everything behind a face imports the metrics.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway import __version__, signing
from gateway.errors import ConfigError
from gateway.ops.dlq import add_parser as add_dlq_parser
from gateway.tools.conformance import cli as conformance_cli
from gateway.tools.demo import add_parser as add_demo_parser


def _load(path: str):
    from gateway.config import load_config

    return load_config(path)


def cmd_serve(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from gateway.server import serve

    config = _load(args.config)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port), ("internal_port", args.internal_port),
                                   ("workers", args.workers), ("watch_seconds", args.watch)) if v is not None}
    if args.port == 0 and args.internal_port is None and "internal_port" not in ((config.raw or {}).get("server") or {}):
        overrides["internal_port"] = 0  # as in the config file: port 0 picks both ports
    config = replace(config, **overrides)
    if config.port and config.port == config.internal_port:
        print(f"serve: the public port and the internal port (/metrics, /admin/) are both {config.port}: "
              "give --internal-port (or server.internal_port) another port", file=sys.stderr)
        return 2
    return serve(config)


def cmd_validate(args: argparse.Namespace) -> int:
    """Check a gateway config (and its mappings), or mapping files, printing every problem."""
    from gateway.engine.mapping import load_mapping
    from gateway.engine.yamlload import load_yaml

    if getattr(args, "print_schema", False) or getattr(args, "list_adapters", False):
        return _validate_info(args)
    if not args.files:
        print("validate: give config and/or mapping files (or --print-schema, --list-adapters)", file=sys.stderr)
        return 2
    problems = []
    for file in args.files:
        try:
            data = load_yaml(file)
            if isinstance(data, dict) and "partners" in data:
                _load(file)
            else:
                load_mapping(file)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        print(f"{file}: ok")
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
    return 1 if problems else 0


def _validate_info(args: argparse.Namespace) -> int:
    """``validate --print-schema`` (spec/mapping.schema.json) and ``--list-adapters``."""
    if args.print_schema:
        from gateway.engine.mapping_schema import schema_json

        sys.stdout.write(schema_json())
        return 0
    from gateway.engine.adapters import describe

    rows = describe()
    width = max(len(name) for name, _, _ in rows)
    for name, target, text in rows:
        print(f"{name:<{width}}  {text}  [{target}]")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    """Print signed iGSP headers (or a whole curl command) for a body."""
    api_key, secret = args.api_key, args.secret
    if args.partner:
        config = _load(args.config)
        partner = next((p for p in config.partners if p.id == args.partner), None)
        if partner is None:
            print(f"unknown partner {args.partner!r}; configured: {', '.join(p.id for p in config.partners)}",
                  file=sys.stderr)
            return 2
        api_key, secret = partner.api_key, partner.secrets[0]
    if not api_key or not secret:
        print("give --partner with --config, or --api-key and --secret", file=sys.stderr)
        return 2
    body = Path(args.body[1:]).read_bytes() if args.body.startswith("@") else args.body.encode()
    headers = signing.signed_headers(api_key, secret, body)
    if args.url:
        quoted = body.decode().replace("'", "'\\''")
        parts = [f"curl -sS -X {'GET' if not body else 'POST'} '{args.url}'"]
        parts += [f"-H '{k}: {v}'" for k, v in headers.items()]
        if body:
            parts.append(f"--data-raw '{quoted}'")
        print(" \\\n  ".join(parts))
    else:
        for key, value in headers.items():
            print(f"{key}: {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="igsp-gateway", description=__doc__)
    parser.add_argument("--version", action="version", version=f"igsp-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--config", required=True, help="gateway config file (YAML)")
    p.add_argument("--host")
    p.add_argument("--port", type=int, help="the public port: the iGSP API and the legacy callbacks")
    p.add_argument("--internal-port", type=int, help="the internal port: /metrics and /admin/")
    p.add_argument("--workers", type=int, help="worker processes sharing the port (SO_REUSEPORT)")
    p.add_argument("--watch", type=float, nargs="?", const=2.0, metavar="SECONDS",
                   help="reload when the config or a mapping file changes, checking every SECONDS (default 2); "
                        "SIGHUP always reloads")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("validate", help="check config and mapping files without starting anything")
    p.add_argument("files", nargs="*", help="gateway config files and/or mapping files")
    p.add_argument("--print-schema", action="store_true", help="print the mapping format's JSON Schema and exit")
    p.add_argument("--list-adapters", action="store_true", help="list installed adapters and exit")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("sign", help="print signed iGSP headers (or a curl command) for a body")
    p.add_argument("--config", default="gateway.yaml")
    p.add_argument("--partner", help="partner id in --config whose key pair signs")
    p.add_argument("--api-key")
    p.add_argument("--secret")
    p.add_argument("--body", default="", help="the exact body, or @file")
    p.add_argument("--url", help="print a complete curl command for this URL")
    p.set_defaults(func=cmd_sign)

    conformance_cli.add_parser(sub)
    add_demo_parser(sub)
    add_dlq_parser(sub)

    from gateway.tools.chaos import add_parser as add_chaos
    from gateway.tools.try_cmd import add_parser as add_try

    add_try(sub)
    add_chaos(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
