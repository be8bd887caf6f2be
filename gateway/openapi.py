"""The OpenAPI 3.1 description of the REST API, served at /api/v1/openapi.json.

The document is static data, written here by hand from the handlers
(gateway/api.py, workspaces_api.py, teams_api.py, routes_api.py,
prebuilds.py) and the validators they call (auth/tokens.py, auth/teams.py,
routing/rules.py, launcher/base.py). It is built once at import and served
as the same bytes to anyone. tests/gateway/test_openapi.py checks the live
API against it and fails when a route under /api/v1 is missing from it, so
a change to a handler's answers belongs here too.
"""

from __future__ import annotations

import json
from typing import Any, Final

from aiohttp import web

from gateway import __version__

PATH: Final = "/api/v1/openapi.json"

JSON: Final = "application/json"
Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    """`schema` or null (JSON Schema 2020-12, as OpenAPI 3.1 uses it)."""
    return {"anyOf": [schema, {"type": "null"}]}


def obj(properties: dict[str, Schema], required: tuple[str, ...] | None = None, **extra: Any) -> Schema:
    """A closed object; `required` defaults to every property."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties if required is None else required),
        "additionalProperties": False,
        **extra,
    }


STRING: Final[Schema] = {"type": "string"}
NUMBER: Final[Schema] = {"type": "number"}
INTEGER: Final[Schema] = {"type": "integer"}
BOOLEAN: Final[Schema] = {"type": "boolean"}
TIME: Final[Schema] = {"type": "number", "description": "Unix time in seconds."}
PORT: Final[Schema] = {"type": "integer", "minimum": 1, "maximum": 65535}
# auth.policy.is_identity: `<provider>:<user id>`.
IDENTITY: Final[Schema] = {
    "type": "string",
    "pattern": r"^[a-z0-9][a-z0-9_.-]{0,63}:[^\s,:]{1,200}$",
    "description": "An identity, `<provider>:<user id>`.",
}
STRINGS: Final[Schema] = {"type": "array", "items": STRING}

# --- identifiers in paths ----------------------------------------------------------------
TOKEN_ID: Final = r"^[a-z2-7]{16}$"
WORKSPACE_ID: Final = r"^w[a-z2-7]{16}$"
TEAM_NAME: Final = r"^[a-z0-9][a-z0-9-]{0,62}$"
RULE_ID: Final = r"^[a-z0-9][a-z0-9_-]{0,62}$"
ETAG_PATTERN: Final = r'^(\*|(W/)?"[0-9]{1,18}")$'

# --- limits the handlers enforce -----------------------------------------------------------
TOKEN_SCOPES: Final = ["workspace", "api", "admin"]
TOKEN_MAX_LIFETIME: Final = 366 * 86400
TOKEN_DEFAULT_LIFETIME: Final = 90 * 86400
WORKSPACE_STATES: Final = ["starting", "running", "stopping", "stopped", "failed"]
VISIBILITIES: Final = ["private", "public"]
ENV_NAME: Final = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
PORT_NAME: Final = r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,39}$"
TEAM_GROUP: Final = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}:[A-Za-z0-9][A-Za-z0-9_./-]{0,254}$"
TEAM_MAX_ENTRIES: Final = 1000
_LABEL: Final = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST_PATTERN: Final = rf"^(\*\.)?({_LABEL}\.)*{_LABEL}\.?$"
HEADER_NAME: Final = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
HEADER_VALUE: Final = r"^([\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?)?$"


def _env() -> Schema:
    return {
        "type": "object",
        "propertyNames": {"pattern": ENV_NAME},
        "additionalProperties": {"type": "string", "description": "No NUL characters."},
        "default": {},
        "description": "Environment variables (names of letters, digits and `_`; at most 256 KiB in all).",
    }


def _rule_properties(*, response: bool) -> dict[str, Schema]:
    """The fields of routing.rules.Rule: as the client sends them (defaults) or as the API answers (normalised)."""
    seconds = "Seconds, more than 0."
    props: dict[str, Schema] = {
        "id": {
            "type": "string",
            "pattern": RULE_ID,
            "description": "The rule's id; when sent, it must equal the id in the path.",
        },
        "hosts": {
            "type": "array",
            "minItems": 1,
            "maxItems": 100,
            "items": {"type": "string", "maxLength": 253, "pattern": HOST_PATTERN},
            "description": (
                "Exact host names or one-label `*.suffix` wildcards, each covered by one of the gateway's "
                "certificates, never the gateway's own domain nor its workspace hosts; no duplicates."
            ),
        },
        "path_prefix": {
            "type": "string",
            "maxLength": 1024,
            "pattern": "^/",
            "default": "/",
            "description": "A canonical ASCII path (no query, no dot segments, no encoded slashes).",
        },
        "upstream": {
            "type": "string",
            "maxLength": 2048,
            "pattern": r"^([Hh][Tt][Tt][Pp][Ss]?://|workspace:)",
            "description": (
                "`http(s)://host:port[/base]` (explicit port, no credentials, query or fragment) or "
                "`workspace:<id>:<port>`; never the gateway itself."
            ),
        },
        "access": {
            "type": "string",
            "pattern": r"^(public|authenticated|admin|team:\S.*|users:.+)$",
            "default": "authenticated",
            "description": "`public`, `authenticated`, `admin`, `team:<name>` or `users:<identity>[,<identity>...]`.",
        },
        "websocket": {**BOOLEAN, "default": True},
        "strip_prefix": {**BOOLEAN, "default": False},
        "preserve_host": {**BOOLEAN, "default": False},
        "connect_timeout": {
            **NUMBER, "exclusiveMinimum": 0, "maximum": 300, "default": 5.0, "description": seconds,
        },
        "idle_timeout": {
            **NUMBER, "exclusiveMinimum": 0, "maximum": 86400, "default": 300.0, "description": seconds,
        },
        "request_headers": {
            "type": "object",
            "maxProperties": 32,
            "propertyNames": {"maxLength": 64, "pattern": HEADER_NAME},
            "additionalProperties": {"type": "string", "maxLength": 4096, "pattern": HEADER_VALUE},
            "default": {},
            "description": (
                "Headers set on every forwarded request. Not allowed: hop-by-hop and framing headers, "
                "Host, Cookie, X-Request-Id, X-Wsgate-*, X-Forwarded-*, Forwarded*, Sec-WebSocket-*."
            ),
        },
        "identity_headers": {**BOOLEAN, "default": False},
    }
    if response:
        for p in props.values():
            p.pop("default", None)
        props["version"] = {**nullable(INTEGER), "description": "The rule's version, as in its ETag."}
    return props


def _schemas() -> dict[str, Schema]:
    token_props: dict[str, Schema] = {
        "id": {"type": "string", "pattern": TOKEN_ID},
        "owner": IDENTITY,
        "name": STRING,
        "scopes": {"type": "array", "items": {"enum": TOKEN_SCOPES}},
        "created": TIME,
        "expires": TIME,
        "last_used": {**nullable(NUMBER), "description": "Unix time of the last use (to the minute), or null."},
    }
    port = obj({
        "number": PORT,
        "name": STRING,
        "visibility": {"enum": VISIBILITIES},
        "url": {"type": "string", "format": "uri"},
    })
    output = obj({"path": STRING, "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}, "size": INTEGER})
    return {
        "Error": obj(
            {
                "error": {**STRING, "description": "What is wrong, for people."},
                "field": {**STRING, "description": "The request field (or header) that is wrong."},
                "current": {
                    **nullable(INTEGER),
                    "description": "On a 412 from PUT: the version the server has now (null: none).",
                },
                "status": {**INTEGER, "description": "Set when the gateway itself answers, before the API."},
                "message": {**STRING, "description": "Set when the gateway itself answers, before the API."},
                "request_id": {**STRING, "description": "Set when the gateway itself answers, before the API."},
            },
            ("error",),
        ),
        "Me": obj(
            {
                "identity": IDENTITY,
                "provider": STRING,
                "id": {**STRING, "description": "The provider's immutable user id."},
                "login": STRING,
                "name": STRING,
                "email": STRING,
                "avatar": STRING,
                "groups": {**STRINGS, "description": "The provider's groups, lower-case, sorted."},
                "admin": {**BOOLEAN, "description": "Whether the person is a gateway admin."},
                "csrf_token": {
                    **STRING,
                    "description": "Only with a session: the value to send in X-CSRF-Token on unsafe requests.",
                },
            },
            ("identity", "provider", "id", "login", "name", "email", "avatar", "groups", "admin"),
        ),
        "Token": obj(token_props),
        "TokenList": obj({"tokens": {"type": "array", "items": ref("Token")}}),
        "NewToken": obj({
            **token_props,
            "token": {
                "type": "string",
                "pattern": r"^wsg_[a-z2-7]{16}_[A-Za-z0-9_-]{43}$",
                "description": "The token itself; shown only this once.",
            },
        }),
        "TokenRequest": obj(
            {
                "name": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 100,
                    "description": "1 to 100 printable characters.",
                },
                "scopes": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"enum": TOKEN_SCOPES},
                    "default": ["workspace", "api"],
                    "description": "`admin` only for gateway admins (403 otherwise).",
                },
                "expires_in": {
                    "type": "number",
                    "minimum": 60,
                    "maximum": TOKEN_MAX_LIFETIME,
                    "default": TOKEN_DEFAULT_LIFETIME,
                    "description": "Lifetime in seconds.",
                },
            },
            ("name",),
        ),
        "Workspace": obj(
            {
                "id": {"type": "string", "pattern": WORKSPACE_ID},
                "owner": IDENTITY,
                "state": {"enum": WORKSPACE_STATES},
                "command": STRING,
                "base": STRING,
                "ports": {"type": "array", "items": port},
                "ide_port": nullable(PORT),
                "ide_url": nullable({"type": "string", "format": "uri"}),
                "created": TIME,
                "started": nullable(TIME),
                "finished": nullable(TIME),
                "exit_code": nullable(INTEGER),
                "error": STRING,
                "output_tail": {**STRING, "description": "Only for a failed workspace: the end of its output."},
            },
            ("id", "owner", "state", "command", "base", "ports", "ide_port", "ide_url", "created", "started",
             "finished", "exit_code", "error"),
        ),
        "WorkspaceList": obj({"workspaces": {"type": "array", "items": ref("Workspace")}}),
        "WorkspaceRequest": obj(
            {
                "command": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 8192,
                    "pattern": r"\S",
                    "description": "Not blank, no NUL.",
                },
                "base": {**STRING, "default": "", "description": "The base directory (rootfs) to start from."},
                "env": _env(),
                "ports": {
                    "type": "array",
                    "maxItems": 32,
                    "default": [],
                    "items": {
                        "oneOf": [
                            PORT,
                            obj(
                                {
                                    "number": PORT,
                                    "name": {"type": "string", "pattern": PORT_NAME, "default": ""},
                                    "visibility": {"enum": VISIBILITIES, "default": "private"},
                                },
                                ("number",),
                            ),
                        ]
                    },
                    "description": "Ports to expose, each declared once.",
                },
                "ide_port": {**nullable(PORT), "default": None},
            },
            ("command",),
        ),
        "PortVisibility": obj({"visibility": {"enum": VISIBILITIES}}),
        "Team": obj({
            "name": {"type": "string", "pattern": TEAM_NAME},
            "groups": {**STRINGS, "description": "Qualified provider groups, lower-case, sorted."},
            "members": {"type": "array", "items": IDENTITY},
            "admins": {"type": "array", "items": IDENTITY},
            "source": {"enum": ["config", "api"], "description": "Teams from the config file are read-only here."},
            "version": {**nullable(INTEGER), "description": "The version, as in the ETag; null for config teams."},
        }),
        "TeamList": obj({"teams": {"type": "array", "items": ref("Team")}}),
        "TeamRequest": obj(
            {
                "name": {"type": "string", "description": "When sent, it must equal the name in the path."},
                "groups": {
                    "type": "array",
                    "maxItems": TEAM_MAX_ENTRIES,
                    "items": {"type": "string", "pattern": TEAM_GROUP},
                    "default": [],
                    "description": "Qualified provider groups, `<provider>:<org or group>`.",
                },
                "members": {"type": "array", "maxItems": TEAM_MAX_ENTRIES, "items": IDENTITY, "default": []},
                "admins": {
                    "type": "array",
                    "maxItems": TEAM_MAX_ENTRIES,
                    "items": IDENTITY,
                    "default": [],
                    "description": "Members who may change the team; a team admin cannot remove themself.",
                },
            },
            (),
        ),
        "Rule": obj(_rule_properties(response=True)),
        "RuleList": obj({"routes": {"type": "array", "items": ref("Rule")}}),
        "RuleRequest": obj(_rule_properties(response=False), ("hosts", "upstream")),
        "AuditEntry": {
            "type": "object",
            "properties": {
                "seq": INTEGER,
                "time": TIME,
                "kind": {**STRING, "description": "`rule` or `team`."},
                "id": STRING,
                "version": nullable(INTEGER),
                "actor": IDENTITY,
                "via": {"enum": ["session", "token"]},
                "action": {"enum": ["put", "delete"]},
                "before": {"description": "The document before the change (null: it did not exist)."},
                "after": {"description": "The document after the change (null: deleted)."},
            },
            "required": ["seq", "time", "kind", "id"],
        },
        "AuditPage": obj({"entries": {"type": "array", "items": ref("AuditEntry")}}),
        "Prebuild": obj(
            {
                "id": {"type": "string", "pattern": WORKSPACE_ID},
                "team": STRING,
                "author": IDENTITY,
                "command": STRING,
                "base": STRING,
                "status": {"enum": ["running", "succeeded", "failed", "cancelled"]},
                "state": {"enum": WORKSPACE_STATES},
                "exit_code": nullable(INTEGER),
                "created": TIME,
                "started": nullable(TIME),
                "finished": nullable(TIME),
                "log_url": STRING,
                "page_url": STRING,
                "provenance_url": nullable(STRING),
                "outputs": {"type": "array", "items": output},
                "source": obj({"repository": STRING, "revision": STRING}),
                "cancelled_by": IDENTITY,
                "error": STRING,
            },
            ("id", "team", "author", "command", "base", "status", "state", "exit_code", "created", "started",
             "finished", "log_url", "page_url", "provenance_url", "outputs"),
        ),
        "PrebuildList": obj({"prebuilds": {"type": "array", "items": ref("Prebuild")}}),
        "PrebuildRequest": obj(
            {
                "team": {"type": "string", "minLength": 1, "description": "A team the caller is a member of."},
                "command": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 8192,
                    "pattern": r"\S",
                    "description": "Not blank, no NUL.",
                },
                "base": {**STRING, "default": ""},
                "env": _env(),
                "source": {
                    **nullable(obj(
                        {
                            "repository": {
                                "type": "string",
                                "maxLength": 2048,
                                "pattern": r"^(https://|http://|ssh://|git@)[^\s]*$",
                                "description": "The repository URL: printable, no spaces.",
                            },
                            "revision": {
                                "type": "string",
                                "maxLength": 256,
                                "pattern": r"^[^\s]*$",
                                "default": "",
                                "description": "A commit id or ref: printable, no spaces.",
                            },
                        },
                        ("repository",),
                    )),
                    "default": None,
                },
            },
            ("team", "command"),
        ),
        "Provenance": {
            "type": "object",
            "description": "An in-toto Statement v1 with SLSA v1 provenance.",
            "properties": {
                "_type": {"const": "https://in-toto.io/Statement/v1"},
                "subject": {"type": "array", "items": {"type": "object"}},
                "predicateType": {"const": "https://slsa.dev/provenance/v1"},
                "predicate": {"type": "object"},
            },
            "required": ["_type", "subject", "predicateType", "predicate"],
        },
        "JWKS": {
            "type": "object",
            "properties": {"keys": {"type": "array", "items": {"type": "object", "required": ["kty"]}}},
            "required": ["keys"],
        },
    }


# --- responses ------------------------------------------------------------------------------
NO_STORE: Final[Schema] = {"description": "Always `no-store`.", "required": True, "schema": {"const": "no-store"}}


def answer(description: str, schema: str | Schema | None, *, headers: dict[str, Schema] | None = None,
           media_type: str = JSON) -> Schema:
    out: Schema = {"description": description, "headers": {"Cache-Control": NO_STORE, **(headers or {})}}
    if schema is not None:
        out["content"] = {media_type: {"schema": ref(schema) if isinstance(schema, str) else schema}}
    return out


def failure(name: str) -> Schema:
    return {"$ref": f"#/components/responses/{name}"}


def _responses() -> dict[str, Schema]:
    def err(description: str, **headers: Schema) -> Schema:
        return answer(description, "Error", headers=headers)

    return {
        "BadRequest": err("The request is malformed; `field` names what is wrong when there is one field to blame."),
        "Unauthorized": err(
            "No valid session or token (tokens need the `api` scope).",
            **{"WWW-Authenticate": {"required": True, "schema": {"const": 'Bearer realm="wsgate"'}}},
        ),
        "Forbidden": err(
            "Not allowed: a session's unsafe request without the right X-CSRF-Token, or missing rights."
        ),
        "AdminForbidden": err(
            "Admins only (a token needs the `admin` scope), or a session's unsafe request without X-CSRF-Token."
        ),
        "NotFound": err("No such thing, or not yours to see: both answer alike."),
        "Conflict": err("The request conflicts with the current state."),
        "PreconditionFailed": err("If-Match (or If-None-Match) did not hold; `current` may give the version now."),
        "PayloadTooLarge": err("The body is larger than the API accepts (1 MiB)."),
        "UnsupportedMediaType": err("The body must be sent as application/json."),
        "Unavailable": err("The state store is out of reach for a moment; try again."),
        "LauncherUnavailable": err(
            "The embedded launcher is off on this gateway, it runs as many workspaces as it may, "
            "or the state store is out of reach."
        ),
    }


# --- parameters ------------------------------------------------------------------------------
def path_param(name: str, pattern: str, description: str) -> Schema:
    return {
        "name": name, "in": "path", "required": True, "description": description,
        "schema": {"type": "string", "pattern": pattern},
    }


def _parameters() -> dict[str, Schema]:
    return {
        "CSRF": {
            "name": "X-CSRF-Token",
            "in": "header",
            "required": False,
            "description": (
                "With the session cookie: the session's CSRF token (`csrf_token` of GET /api/v1/me), "
                "required on unsafe methods (403 without it). Ignored with a bearer token."
            ),
            "schema": {"type": "string"},
        },
        "IfMatch": {
            "name": "If-Match",
            "in": "header",
            "required": False,
            "description": (
                "An ETag this API sent (`\"3\"`, `W/` allowed): the write happens only if the document still has "
                "that version (412 otherwise); `\"0\"` means it must not exist yet. `*`: it must exist."
            ),
            "schema": {"type": "string", "pattern": ETAG_PATTERN},
        },
        "TokenId": path_param("id", TOKEN_ID, "The token's id (the part after `wsg_`)."),
        "WorkspaceId": path_param("id", WORKSPACE_ID, "The workspace's id."),
        "TeamName": path_param("name", TEAM_NAME, "The team's name."),
        "RuleId": path_param("id", RULE_ID, "The rule's id."),
        "PrebuildId": path_param("id", WORKSPACE_ID, "The prebuild's id."),
    }


def param(name: str) -> Schema:
    return {"$ref": f"#/components/parameters/{name}"}


def follow_param(what: str, *, default: bool) -> Schema:
    """The `follow` query flag of the log endpoints."""
    return {"name": "follow", "in": "query", "required": False,
            "description": f"{what} (`0`, `false`, `no`: do not).", "schema": {"type": "boolean", "default": default}}


def body(schema: str, description: str) -> Schema:
    return {"required": True, "description": description, "content": {JSON: {"schema": ref(schema)}}}


SESSION: Final[list[dict[str, list[str]]]] = [{"bearerToken": []}, {"sessionCookie": []}]
ETAG_HEADER: Final[Schema] = {"description": "The version, for If-Match.", "schema": {"type": "string"}}


def op(
    operation_id: str,
    tag: str,
    summary: str,
    responses: dict[str, Schema],
    *,
    parameters: list[Schema] | None = None,
    request: Schema | None = None,
    security: list[dict[str, list[str]]] | None = None,
    unsafe: bool = False,
) -> Schema:
    out: Schema = {"operationId": operation_id, "tags": [tag], "summary": summary}
    params = list(parameters or [])
    if unsafe:
        params.append(param("CSRF"))
    if params:
        out["parameters"] = params
    if request is not None:
        out["requestBody"] = request
    out["responses"] = responses
    out["security"] = SESSION if security is None else security
    return out


def _paths() -> dict[str, Schema]:
    unauth, forbidden, not_found = failure("Unauthorized"), failure("Forbidden"), failure("NotFound")
    bad, too_large, media = failure("BadRequest"), failure("PayloadTooLarge"), failure("UnsupportedMediaType")
    unavailable, launcher = failure("Unavailable"), failure("LauncherUnavailable")
    admin_only, precondition, conflict = failure("AdminForbidden"), failure("PreconditionFailed"), failure("Conflict")
    body_errors = {"400": bad, "413": too_large, "415": media}
    team_etag = {"ETag": ETAG_HEADER}
    rule_etag = {"ETag": {**ETAG_HEADER, "required": True}}
    text_log = {"type": "string"}
    log_headers = {"X-Content-Type-Options": {"schema": {"const": "nosniff"}}}
    return {
        PATH: {
            "get": op("getOpenAPI", "meta", "This document.", {
                "200": {
                    "description": "The OpenAPI 3.1 document of this API.",
                    "content": {JSON: {"schema": {"type": "object", "required": ["openapi", "paths"]}}},
                },
            }, security=[]),
        },
        "/api/v1/me": {
            "get": op("getMe", "me", "Who the caller is.", {
                "200": answer("The signed-in person.", "Me"), "401": unauth, "503": unavailable,
            }),
        },
        "/api/v1/tokens": {
            "get": op("listTokens", "tokens", "The caller's personal access tokens, newest first.", {
                "200": answer("The caller's tokens, expired ones included.", "TokenList"),
                "401": unauth, "503": unavailable,
            }),
            "post": op("createToken", "tokens", "Create a personal access token.", {
                "201": answer("The new token; `token` is shown only now.", "NewToken"),
                **body_errors, "401": unauth,
                "403": failure("Forbidden"), "503": unavailable,
            }, request=body("TokenRequest", "The token to create."), unsafe=True),
        },
        "/api/v1/tokens/{id}": {
            "delete": op("revokeToken", "tokens", "Revoke one of the caller's tokens.", {
                "204": answer("Revoked.", None), "401": unauth, "403": forbidden, "404": not_found,
                "503": unavailable,
            }, parameters=[param("TokenId")], unsafe=True),
        },
        "/api/v1/workspaces": {
            "get": op("listWorkspaces", "workspaces", "The caller's workspaces (an admin's: all of them).", {
                "200": answer("The workspaces.", "WorkspaceList"), "401": unauth, "503": launcher,
            }),
            "post": op("createWorkspace", "workspaces", "Start a new workspace.", {
                "201": answer("The workspace, starting.", "Workspace"),
                **body_errors, "401": unauth, "403": forbidden, "503": launcher,
                "500": answer("The launcher failed to start it.", "Error"),
            }, request=body("WorkspaceRequest", "What to run."), unsafe=True),
        },
        "/api/v1/workspaces/{id}": {
            "get": op("getWorkspace", "workspaces", "One workspace.", {
                "200": answer("The workspace.", "Workspace"), "401": unauth, "404": not_found, "503": launcher,
            }, parameters=[param("WorkspaceId")]),
            "delete": op("deleteWorkspace", "workspaces", "Stop and delete a workspace.", {
                "204": answer("Deleted.", None), "401": unauth, "403": forbidden, "404": not_found,
                "503": launcher,
            }, parameters=[param("WorkspaceId")], unsafe=True),
        },
        "/api/v1/workspaces/{id}/start": {
            "post": op("startWorkspace", "workspaces", "Start a stopped workspace again.", {
                "200": answer("The workspace, starting.", "Workspace"), "401": unauth, "403": forbidden,
                "404": not_found, "409": conflict, "503": launcher,
            }, parameters=[param("WorkspaceId")], unsafe=True),
        },
        "/api/v1/workspaces/{id}/stop": {
            "post": op("stopWorkspace", "workspaces", "Stop a workspace.", {
                "200": answer("The workspace, stopped.", "Workspace"), "401": unauth, "403": forbidden,
                "404": not_found, "503": launcher,
            }, parameters=[param("WorkspaceId")], unsafe=True),
        },
        "/api/v1/workspaces/{id}/ports/{port}": {
            "patch": op("setPortVisibility", "workspaces", "Make a port public or private (owner only).", {
                "200": answer("The workspace.", "Workspace"), **body_errors, "401": unauth, "403": forbidden,
                "404": not_found, "503": launcher,
            }, parameters=[
                param("WorkspaceId"),
                {"name": "port", "in": "path", "required": True, "schema": PORT, "description": "The port number."},
            ], request=body("PortVisibility", "The new visibility."), unsafe=True),
        },
        "/api/v1/workspaces/{id}/logs": {
            "get": op("getWorkspaceLogs", "workspaces", "The workspace's output.", {
                "200": answer("The output so far (and, with follow, until it ends).", text_log,
                              media_type="text/plain", headers=log_headers),
                "401": unauth, "404": not_found, "503": launcher,
            }, parameters=[
                param("WorkspaceId"),
                follow_param("Keep streaming until the workspace ends", default=False),
            ]),
        },
        "/api/v1/teams": {
            "get": op("listTeams", "teams", "The teams the caller belongs to (an admin's: all of them).", {
                "200": answer("The teams, by name.", "TeamList"), "401": unauth, "503": unavailable,
            }),
        },
        "/api/v1/teams/{name}": {
            "get": op("getTeam", "teams", "One team.", {
                "200": answer("The team; its ETag unless it comes from the config.", "Team", headers=team_etag),
                "401": unauth, "404": not_found, "503": unavailable,
            }, parameters=[param("TeamName")]),
            "put": op("putTeam", "teams", "Create or replace a team (gateway admins; a team's admins).", {
                "200": answer("The team, replaced.", "Team", headers=team_etag),
                "201": answer("The team, created.", "Team", headers=team_etag),
                **body_errors, "401": unauth, "403": forbidden, "404": not_found,
                "409": answer("The team is defined in the config file.", "Error"),
                "412": precondition, "503": unavailable,
            }, parameters=[param("TeamName"), param("IfMatch")], request=body("TeamRequest", "The team."),
                unsafe=True),
            "delete": op("deleteTeam", "teams", "Delete a team (gateway admins).", {
                "204": answer("Deleted.", None), "400": bad, "401": unauth, "403": forbidden, "404": not_found,
                "409": answer("The team is defined in the config file.", "Error"),
                "412": precondition, "503": unavailable,
            }, parameters=[param("TeamName"), param("IfMatch")], unsafe=True),
        },
        "/api/v1/routes": {
            "get": op("listRoutes", "routes", "The admin routing rules, by id.", {
                "200": answer("The rules.", "RuleList"), "401": unauth, "403": admin_only, "503": unavailable,
            }),
        },
        "/api/v1/routes/{id}": {
            "get": op("getRoute", "routes", "One routing rule.", {
                "200": answer("The rule.", "Rule", headers=rule_etag), "401": unauth, "403": admin_only,
                "404": not_found, "503": unavailable,
            }, parameters=[param("RuleId")]),
            "put": op("putRoute", "routes", "Create or replace a routing rule; it applies at once.", {
                "200": answer("The rule, replaced.", "Rule", headers=rule_etag),
                "201": answer("The rule, created.", "Rule", headers=rule_etag),
                **body_errors, "401": unauth, "403": admin_only, "412": precondition, "503": unavailable,
            }, parameters=[
                param("RuleId"), param("IfMatch"),
                {"name": "If-None-Match", "in": "header", "required": False,
                 "description": "`*`: only create (412 if the rule exists).", "schema": {"const": "*"}},
            ], request=body("RuleRequest", "The rule; fields left out take their defaults."), unsafe=True),
            "delete": op("deleteRoute", "routes", "Delete a routing rule.", {
                "204": answer("Deleted.", None), "400": bad, "401": unauth, "403": admin_only, "404": not_found,
                "412": precondition, "503": unavailable,
            }, parameters=[param("RuleId"), param("IfMatch")], unsafe=True),
        },
        "/api/v1/audit": {
            "get": op("getAudit", "audit", "The audit log of rule and team changes, newest first.", {
                "200": answer("A page of entries.", "AuditPage"), "400": bad, "401": unauth, "403": admin_only,
                "503": unavailable,
            }, parameters=[
                {"name": "limit", "in": "query", "required": False, "description": "Entries per page.",
                 "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100}},
                {"name": "before", "in": "query", "required": False,
                 "description": "Page back: only entries with a lower `seq`.",
                 "schema": {"type": "integer", "minimum": 1, "maximum": 2**62}},
                {"name": "kind", "in": "query", "required": False, "description": "Only changes to rules or teams.",
                 "schema": {"enum": ["rule", "team"]}},
            ]),
        },
        "/api/v1/prebuilds": {
            "get": op("listPrebuilds", "prebuilds", "Prebuilds of the caller's teams, newest first.", {
                "200": answer("The prebuilds.", "PrebuildList"), "401": unauth,
                "404": answer("No such team, or not the caller's.", "Error"), "503": launcher,
            }, parameters=[{"name": "team", "in": "query", "required": False, "description": "Only this team's.",
                            "schema": {"type": "string"}}]),
            "post": op("createPrebuild", "prebuilds", "Start a prebuild for a team the caller belongs to.", {
                "201": answer("The prebuild, running.", "Prebuild"), **body_errors, "401": unauth,
                "403": forbidden, "404": answer("No such team, or not the caller's.", "Error"), "503": launcher,
            }, request=body("PrebuildRequest", "What to run, for which team."), unsafe=True),
        },
        "/api/v1/prebuilds/{id}": {
            "get": op("getPrebuild", "prebuilds", "One prebuild (its team's members and admins).", {
                "200": answer("The prebuild.", "Prebuild"),
                "404": answer("No such prebuild, not the caller's, or no credentials: all alike.", "Error"),
                "503": unavailable,
            }, parameters=[param("PrebuildId")]),
        },
        "/api/v1/prebuilds/{id}/cancel": {
            "post": op("cancelPrebuild", "prebuilds", "Cancel a running prebuild.", {
                "200": answer("The prebuild, cancelled.", "Prebuild"), "401": unauth, "403": forbidden,
                "404": not_found, "409": answer("The prebuild has already ended.", "Error"), "503": unavailable,
            }, parameters=[param("PrebuildId")], unsafe=True),
        },
        "/api/v1/prebuilds/{id}/provenance": {
            "get": op("getPrebuildProvenance", "prebuilds", "The provenance of a prebuild that succeeded.", {
                "200": answer("The in-toto statement.", "Provenance", media_type="application/vnd.in-toto+json",
                              headers={"X-Content-Type-Options": {"schema": {"const": "nosniff"}}}),
                "404": answer("No such prebuild (or not visible), or it has no provenance (yet).", "Error"),
                "503": unavailable,
            }, parameters=[param("PrebuildId")]),
        },
        "/prebuilds/{id}/logs": {
            "get": op("getPrebuildLogs", "prebuilds", "A prebuild's log as sanitised text (not JSON).", {
                "200": answer("The log (followed live by default), ending with a `[wsgate]` status line.",
                              text_log, media_type="text/plain", headers=log_headers),
                "404": answer("No such prebuild, not visible, or no credentials.", text_log, media_type="text/plain",
                              headers=log_headers),
            }, parameters=[
                param("PrebuildId"),
                follow_param("Keep streaming while it runs", default=True),
            ]),
        },
        "/.well-known/jwks.json": {
            "get": op("getJWKS", "keys", "The public keys that verify the gateway's identity assertions.", {
                "200": {
                    "description": "A JSON Web Key Set.",
                    "headers": {"Cache-Control": {"required": True,
                                                  "schema": {"const": "public, max-age=300"}}},
                    "content": {JSON: {"schema": ref("JWKS")}},
                },
            }, security=[]),
        },
    }


def build() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "wsgate REST API",
            "version": __version__,
            "description": (
                "The REST API of a wsgate gateway, on its main domain. JSON in and out; errors are "
                "`{\"error\": ..., \"field\"?: ...}`. Authenticate with a personal access token "
                "(`Authorization: Bearer wsg_...`, scope `api`; admin operations also need `admin`) or, "
                "from a browser, the session cookie plus `X-CSRF-Token` on unsafe methods."
            ),
        },
        "servers": [{"url": "/", "description": "The gateway's main domain."}],
        "tags": [{"name": t} for t in ("meta", "me", "tokens", "workspaces", "teams", "routes", "audit",
                                        "prebuilds", "keys")],
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "responses": _responses(),
            "parameters": _parameters(),
            "securitySchemes": {
                "bearerToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "wsg_<id>_<secret>",
                    "description": "A personal access token with the `api` scope (and `admin` for admin operations).",
                },
                "sessionCookie": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "__Host-wsgate-session",
                    "description": "The browser session; unsafe methods also need the X-CSRF-Token header.",
                },
            },
        },
    }


DOCUMENT: Final = build()
_BODY: Final = json.dumps(DOCUMENT, indent=1, sort_keys=False).encode()


async def serve(request: web.Request) -> web.Response:
    return web.Response(
        body=_BODY,
        content_type=JSON,
        headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"},
    )


def routes(app: web.Application) -> None:
    app.router.add_get(PATH, serve)
