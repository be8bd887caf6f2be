"""`wsgate tokens`: the operator's view of personal access tokens, straight on the store."""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from auth.docstore import StoreUnavailable
from auth.revocation import REVOCATION_KIND
from auth.store import StoreError
from auth.tokens import USE_WRITE_EVERY, TokenError
from gateway.config import Config, is_identity
from gateway.wiring import build_docs, token_store


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M") if ts else "-"


async def _tell_gateways(cfg: Config) -> int:
    """Running gateways drop what they cached of the token: within half a second on SQLite (they
    poll the revocation generation), at once with Redis (pub/sub)."""
    docs = build_docs(cfg)
    try:
        await docs.bump(REVOCATION_KIND)
    except (StoreError, StoreUnavailable) as e:
        print(f"wsgate: the token is revoked in the store, but running gateways were not told ({e}): "
              f"they may accept it for up to {USE_WRITE_EVERY:.0f} more seconds", file=sys.stderr)
        return 1
    finally:
        await docs.close()
    return 0


async def run(args: argparse.Namespace, cfg: Config) -> int:
    store = token_store(cfg)
    try:
        if args.tokens_command == "create":
            if not is_identity(args.owner):
                print(f"wsgate: --owner: expected an identity '<provider>:<id>', got {args.owner!r}", file=sys.stderr)
                return 2
            scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
            try:
                token, info = await store.create(args.owner, args.name, scopes, args.expires_days * 86400)
            except TokenError as e:
                print(f"wsgate: {e}", file=sys.stderr)
                return 2
            print(token)
            print(f"# id {info.id}, owner {info.owner}, scopes {','.join(info.scopes)}, "
                  f"expires {_when(info.expires)} UTC. Shown once: store it now.", file=sys.stderr)
            return 0
        if args.tokens_command == "list":
            rows = await store.list(args.owner)
            print(f"{'ID':<18} {'OWNER':<24} {'SCOPES':<20} {'EXPIRES (UTC)':<17} {'LAST USED':<17} NAME")
            for t in rows:
                print(f"{t.id:<18} {t.owner:<24} {','.join(t.scopes):<20} {_when(t.expires):<17} "
                      f"{_when(t.last_used):<17} {t.name}")
            return 0
        if args.tokens_command == "revoke":
            if await store.revoke(args.id):
                print(f"revoked {args.id}")
                return await _tell_gateways(cfg)
            print(f"wsgate: no token with id {args.id!r}", file=sys.stderr)
            return 1
    except StoreError as e:
        print(f"wsgate: {e} (is redis_url reachable?)", file=sys.stderr)
        return 1
    finally:
        await store.close()
    return 2
