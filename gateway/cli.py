"""The `wsgate` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from certs.errors import CertificateError
from gateway.config import ConfigError, load_config, with_dev_login

DESCRIPTION = """\
wsgate: an authenticating TLS gateway for cloud developer workspaces.

It terminates TLS for the main domain and every workspace host, and forwards
HTTP and WebSocket traffic to workspaces at https://<port>-<workspace>.ws.<domain>/.
Run `wsgate serve` with no config for the embedded defaults (a local CA under
./.wsgate and the domain wsgate.localhost, which browsers resolve to this machine).
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wsgate", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gateway", description="Run the gateway until SIGTERM. "
                           "SIGHUP re-reads the config file and the certificates without dropping connections.")
    serve.add_argument("--config", "-c", metavar="FILE", help="TOML config file (default: embedded defaults)")
    serve.add_argument("--dev-login", action="store_true",
                       help="turn on the development sign-in (pick any user name); refused unless listening on "
                       "loopback. Same as [auth] dev_login = true")

    config = sub.add_parser("config", help="work with config files", description="Work with config files.")
    csub = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    check = csub.add_parser("check", help="validate a config file without serving",
                            description="Validate FILE exactly as `wsgate serve` would (keys, types, values, "
                            "and that configured certificates load), and print a summary.")
    check.add_argument("file", metavar="FILE")

    certs = sub.add_parser("certs", help="certificates", description="Certificates of the local CA.")
    ssub = certs.add_subparsers(dest="certs_command", metavar="SUBCOMMAND")
    ca = ssub.add_parser("ca", help="print the local CA certificate to trust in browsers",
                         description="Print the local CA certificate's path and PEM. Add it to your browser's or "
                         "system's trust store to open the gateway without warnings.")
    ca.add_argument("--config", "-c", metavar="FILE", help="config file whose state_dir holds the CA")
    tokens = sub.add_parser("tokens", help="personal access tokens",
                            description="Create, list and revoke personal access tokens in the gateway's store "
                            "(SQLite under state_dir, or Redis when redis_url is set). People manage their own "
                            "tokens through /api/v1/tokens; this is the operator's view on the gateway host.")
    tsub = tokens.add_subparsers(dest="tokens_command", metavar="SUBCOMMAND")
    create = tsub.add_parser("create", help="create a token and print it once",
                             description="Create a token for OWNER and print it; it is not shown again.")
    create.add_argument("--owner", required=True, metavar="IDENTITY", help="whose token: '<provider>:<id>'")
    create.add_argument("--name", required=True, help="what it is for, e.g. 'laptop IDE'")
    create.add_argument("--scopes", default="workspace,api",
                        help="comma-separated: workspace, api, admin (default: %(default)s)")
    create.add_argument("--expires-days", type=float, default=90.0, help="lifetime in days (default: %(default)s)")
    listing = tsub.add_parser("list", help="list tokens (never their secrets)", description="List tokens.")
    listing.add_argument("--owner", metavar="IDENTITY", help="only this person's tokens")
    revoke = tsub.add_parser("revoke", help="revoke a token by id", description="Revoke a token by its id.")
    revoke.add_argument("id", metavar="ID")
    for t in (create, listing, revoke):
        t.add_argument("--config", "-c", metavar="FILE", help="config file (for state_dir and redis_url)")
    from gateway.workspace_cli import add_parser as add_workspace_parser

    add_workspace_parser(sub)
    from gateway.teams_cli import add_parser as add_teams_parser

    add_teams_parser(sub)
    from gateway.routes_cli import add_parser as add_routes_parser

    add_routes_parser(sub)
    sub.add_parser("version", help="print the version")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            from gateway.server import serve

            cfg = load_config(args.config)
            if args.dev_login:
                cfg = with_dev_login(cfg)
            return serve(cfg)
        if args.command == "tokens" and args.tokens_command:
            import asyncio

            from gateway.tokens_cli import run

            return asyncio.run(run(args, load_config(args.config)))
        if args.command == "workspace" and args.workspace_command:
            from gateway.workspace_cli import run as run_workspace

            return run_workspace(args)
        if args.command == "teams" and args.teams_command:
            from gateway.teams_cli import run as run_teams

            return run_teams(args)
        if args.command == "routes" and args.routes_command:
            from gateway.routes_cli import run as run_routes

            return run_routes(args)
        if args.command == "config" and args.config_command == "check":
            return _config_check(args.file)
        if args.command == "certs" and args.certs_command == "ca":
            from certs.localca import ca_pem

            cfg = load_config(args.config)
            path, pem = ca_pem(cfg.state_path)
            print(f"# {path}")
            print(pem, end="" if pem.endswith("\n") else "\n")
            return 0
        if args.command == "version":
            from importlib.metadata import version

            from gateway import hot_path_compiled

            print(f"{version('wsgate')} (hot path {'compiled' if hot_path_compiled() else 'interpreted'})")
            return 0
    except (ConfigError, CertificateError) as e:
        print(f"wsgate: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"wsgate: {e}", file=sys.stderr)
        return 1
    if args.command in ("config", "certs", "tokens", "workspace", "teams", "routes"):
        parser.parse_args([args.command, "--help"])
    parser.print_help()
    return 2


def _config_check(path: str) -> int:
    from gateway.server import build_tls, check_coverage

    cfg = load_config(path)
    if cfg.tls.certificates:
        check_coverage(cfg, build_tls(cfg))
    print(f"{path}: OK")
    print(f"  domain: {cfg.domain} (workspaces at *.{cfg.workspace_suffix})")
    print(f"  listen: {cfg.listen.address}:{cfg.listen.port}, workers: {cfg.worker_count}")
    print(f"  certificates: {len(cfg.tls.certificates) or 'local CA under ' + cfg.state_dir}")
    print(f"  static routes: {len(cfg.routes)}, static workspace ports: {len(cfg.workspaces)}")
    return 0
