"""Builds the auth room from the config: providers, stores, keys, policy."""

from __future__ import annotations

import ipaddress
import logging
import ssl
from pathlib import Path

import aiohttp

from auth.docstore import DocStore, RedisDocStore, SQLiteDocStore
from auth.policy import Policy, Team
from auth.providers.base import Provider
from auth.providers.bitbucket import BitbucketProvider
from auth.providers.dev import DevProvider
from auth.providers.github import GitHubProvider
from auth.providers.gitlab import GitLabProvider
from auth.providers.oidc import OIDCProvider
from auth.service import AuthService, Settings
from auth.store import KV, load_or_create_secret
from auth.teams import parse_team
from auth.tokens import KVTokenStore, SQLiteTokenStore, TokenStore
from certs.envelope import Keyring
from gateway.config import Config, ConfigError, ProviderConfig
from gateway.logs import event

log = logging.getLogger("wsgate.auth")

DEV_PROVIDER = "dev"


def auth_paths(config: Config) -> tuple[Path, Path]:
    """(keyring for provider tokens, HMAC key for tickets) under the state directory."""
    keys = config.state_path / "keys"
    return keys / "auth.keyring", keys / "tickets.key"


def prepare_auth_state(config: Config) -> None:
    """Creates the key files once, before workers fork, so every worker shares them."""
    keyring, hmac_key = auth_paths(config)
    Keyring.load_or_create(keyring)
    load_or_create_secret(hmac_key)


def token_store(config: Config, kv: KV | None = None) -> TokenStore:
    if config.redis_url:
        return KVTokenStore(kv or KV(config.redis_url))
    return SQLiteTokenStore(config.state_path / "wsgate.db")


def build_docs(config: Config) -> DocStore:
    """Teams, prebuild results (and later rules): SQLite under state_dir, or Redis when shared."""
    if config.redis_url:
        return RedisDocStore(config.redis_url)
    return SQLiteDocStore(config.state_path / "wsgate.db")


def config_teams(config: Config) -> dict[str, Team]:
    teams: dict[str, Team] = {}
    for t in config.teams:
        teams[t.name] = parse_team(t.name, {"groups": list(t.groups), "members": list(t.members),
                                            "admins": list(t.admins)})
    return teams


def _secret(p: ProviderConfig, where: str) -> str:
    if p.client_secret_file:
        try:
            return Path(p.client_secret_file).read_text().strip()
        except OSError as e:
            raise ConfigError(f"{where}.client_secret_file: cannot read {p.client_secret_file}: {e.strerror}") from None
    return p.client_secret


def _http(p: ProviderConfig) -> aiohttp.ClientSession:
    ctx = ssl.create_default_context(cafile=p.ca_file or None)
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ctx, limit=64),
        timeout=aiohttp.ClientTimeout(total=15, connect=5),
        headers={"User-Agent": "wsgate"},
    )


def build_provider(p: ProviderConfig, http: aiohttp.ClientSession, where: str) -> Provider:
    display = p.display_name or {"github": "GitHub", "gitlab": "GitLab", "bitbucket": "Bitbucket"}.get(p.type, p.name)
    cid, secret, scopes = p.client_id, _secret(p, where), p.scopes
    if p.type in ("github", "bitbucket"):
        # Empty URLs mean the public service (each provider class knows its own).
        cls = GitHubProvider if p.type == "github" else BitbucketProvider
        return cls(
            p.name, display, http, client_id=cid, client_secret=secret, web_url=p.web_url, api_url=p.api_url,
            scopes=scopes,
        )
    if p.type == "gitlab":
        return GitLabProvider(
            p.name, display, http, client_id=cid, client_secret=secret, web_url=p.web_url or "https://gitlab.com",
            scopes=scopes,
        )
    return OIDCProvider(
        p.name, display, http, issuer=p.issuer, client_id=cid, client_secret=secret, scopes=scopes,
        groups_claim=p.groups_claim,
    )


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def build_auth(config: Config, *, warn: bool = True) -> AuthService:
    """Must run on the worker's event loop (it opens HTTP client sessions)."""
    a = config.auth
    sessions: list[aiohttp.ClientSession] = []
    providers: dict[str, Provider] = {}
    for i, p in enumerate(a.providers):
        http = _http(p)
        sessions.append(http)
        providers[p.name] = build_provider(p, http, f"{config.source}: key 'auth.providers[{i}]'")
    if a.dev_login:
        if not is_loopback(config.listen.address):
            raise ConfigError(f"{config.source}: key 'auth.dev_login': refused while listen.address is not loopback")
        providers[DEV_PROVIDER] = DevProvider(DEV_PROVIDER, "Development sign-in", aiohttp.ClientSession())
        sessions.append(providers[DEV_PROVIDER].http)
        if warn:
            event(
                log,
                logging.WARNING,
                "DEV SIGN-IN IS ON: anyone who can reach this gateway may sign in as any user name. "
                "Never use auth.dev_login outside local development.",
                listen=config.listen.address,
            )
    keyring_path, hmac_path = auth_paths(config)
    kv = KV(config.redis_url)
    settings = Settings(
        idle_timeout=a.session_idle_timeout,
        lifetime=a.session_lifetime,
        membership_ttl=a.membership_ttl,
        allowed_groups={
            p.name: frozenset(g.lower() for g in p.allowed_groups) for p in a.providers if p.allowed_groups
        },
    )
    return AuthService(
        kv,
        token_store(config, kv),
        Keyring.load_or_create(keyring_path),
        load_or_create_secret(hmac_path),
        providers,
        Policy(admins=a.admins),
        settings,
        http=sessions,
    )
