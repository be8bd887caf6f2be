"""SLSA v1 provenance for a finished prebuild, as an in-toto Statement v1.

A prebuild's outputs are consumed by workspaces that did not watch it run, so
the gateway publishes who ran what, on which base and source, and the digests
of what came out; consumers match artifacts by those digests.

The statement follows https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md
with predicate https://slsa.dev/spec/v1.0/provenance.  Its ``buildType`` is
``BUILD_TYPE``, whose parameters are:

``externalParameters`` (chosen by whoever started the prebuild)
    ``command``  string, the shell command run in the container.
    ``base``     string, the root filesystem directory it ran on ("/" is the host's root).
    ``team``     string, the team the prebuild ran for.
    ``source``   object, only when known: ``repository`` (URL) and/or ``revision``
                 (commit hash or ref) of the source checked out into the workspace.

``internalParameters`` (set by the gateway, not by the requester)
    ``author``    string, the identity ``<provider>:<id>`` that started the prebuild.
    ``envNames``  array of strings, sorted names of the environment variables set
                  for the command.  Values are never recorded: they may be secrets.

``resolvedDependencies`` holds the source repository (``git+<url>@<revision>``,
with a ``gitCommit`` digest when the revision is a full commit hash) and the base
(``file://<base>``, with a ``sha256`` digest when known).  ``subject`` lists
every output file by its path under the outputs directory; a prebuild without
outputs attests its log (``prebuild.log``) instead, because a v1 Statement needs
at least one subject and every subject needs a digest.  The log is also the only
byproduct, annotated with the command's ``exitCode``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, urlsplit, urlunsplit

from launcher.base import OutputFile

__all__ = [
    "BUILD_TYPE",
    "LOG_NAME",
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "BuildFacts",
    "OutputFile",
    "statement",
]

STATEMENT_TYPE: Final = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE: Final = "https://slsa.dev/provenance/v1"
# Names the schema of the parameters above; bump the version when they change meaning.
BUILD_TYPE: Final = "https://wsgate.dev/docs/prebuild-provenance/v1"
LOG_NAME: Final = "prebuild.log"
LOG_MEDIA_TYPE: Final = "text/plain"

_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_GIT_COMMIT = re.compile(r"(?:[0-9a-f]{40}|[0-9a-f]{64})\Z")
_SCP_LIKE = re.compile(r"(?P<user>[^@/:]+)@(?P<host>[^/:]+):(?P<path>(?!/).+)\Z")


@dataclass(frozen=True, slots=True)
class BuildFacts:
    """Everything the gateway knows about one finished prebuild."""

    prebuild_id: str
    team: str
    author: str  # identity "<provider>:<id>"
    command: str
    base: str  # the root filesystem directory the build ran on ("/" = host root)
    base_digest: str = ""  # "sha256:<hex>" when known
    source_repository: str = ""  # URL
    source_revision: str = ""  # commit hash or ref
    env_names: tuple[str, ...] = ()  # names only: values may be secrets and never appear
    started: float = 0.0  # unix time; 0 = unknown
    finished: float = 0.0
    exit_code: int = 0
    outputs: tuple[OutputFile, ...] = ()
    log_sha256: str = ""  # digest of the prebuild's full log
    builder_id: str = ""  # the gateway, e.g. "https://wsgate.example.test/"
    builder_version: str = ""  # the wsgate version


def statement(f: BuildFacts) -> dict[str, Any]:
    """The in-toto Statement v1 (a JSON-ready dict) with the SLSA v1 provenance of ``f``.

    Raises ValueError for facts that would make a statement verifiers must
    reject (no builder id, no subject digest, malformed digests or paths).
    """
    if not f.builder_id:
        raise ValueError("builder_id: required (SLSA provenance requires runDetails.builder.id)")
    log = _check_sha256(f.log_sha256, "log_sha256") if f.log_sha256 else ""
    subject = [_output_descriptor(o) for o in f.outputs]
    names = [s["name"] for s in subject]
    if len(set(names)) != len(names):
        raise ValueError("outputs: duplicate paths")
    if not subject:
        if not log:
            raise ValueError("a prebuild without outputs needs log_sha256: a statement needs a subject with a digest")
        subject = [{"name": LOG_NAME, "digest": {"sha256": log}}]

    external: dict[str, Any] = {"command": f.command, "base": f.base, "team": f.team}
    repository = _without_credentials(f.source_repository)
    source = {k: v for k, v in (("repository", repository), ("revision", f.source_revision)) if v}
    if source:
        external["source"] = source
    for name in f.env_names:
        if not name or "=" in name or "\x00" in name:
            raise ValueError(f"env_names: {name[:40]!r} is not a variable name (values must never be passed)")
    internal = {"author": f.author, "envNames": sorted(set(f.env_names))}

    dependencies: list[dict[str, Any]] = []
    if repository:
        dependencies.append(_source_descriptor(repository, f.source_revision))
    dependencies.append(_base_descriptor(f.base, f.base_digest))

    builder: dict[str, Any] = {"id": f.builder_id}
    if f.builder_version:
        builder["version"] = {"wsgate": f.builder_version}
    metadata: dict[str, Any] = {}
    if f.prebuild_id:
        metadata["invocationId"] = f.prebuild_id
    if f.started:
        metadata["startedOn"] = rfc3339(f.started)
    if f.finished:
        metadata["finishedOn"] = rfc3339(f.finished)
    run: dict[str, Any] = {"builder": builder, "metadata": metadata}
    if log:
        run["byproducts"] = [
            {
                "name": LOG_NAME,
                "digest": {"sha256": log},
                "mediaType": LOG_MEDIA_TYPE,
                "annotations": {"exitCode": f.exit_code},
            }
        ]

    return {
        "_type": STATEMENT_TYPE,
        "subject": subject,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external,
                "internalParameters": internal,
                "resolvedDependencies": dependencies,
            },
            "runDetails": run,
        },
    }


def rfc3339(t: float) -> str:
    """Unix time as RFC 3339 UTC to the second ("2026-01-02T03:04:05Z"), the form SLSA's Timestamp takes."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _check_sha256(value: str, what: str) -> str:
    if not _SHA256.match(value):
        raise ValueError(f"{what}: expected 64 lowercase hex digits, got {value[:80]!r}")
    return value


def _output_descriptor(o: OutputFile) -> dict[str, Any]:
    parts = o.path.split("/")
    if o.path.startswith("/") or any(p in ("", ".", "..") for p in parts) or not o.path.isprintable():
        raise ValueError(f"outputs: {o.path[:200]!r} is not a clean relative path")
    return {"name": o.path, "digest": {"sha256": _check_sha256(o.sha256, f"outputs[{o.path!r}].sha256")}}


def _without_credentials(url: str) -> str:
    """The URL minus any secret in its userinfo: clone URLs often carry a token, and provenance is public.

    An ssh user name ("git@") is not a secret and stays; for other schemes the
    whole userinfo goes, since a token may be the user name itself.
    """
    parts = urlsplit(url)
    if not parts.scheme or "@" not in parts.netloc:
        return url  # scp-like "git@host:path" has no password field
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    netloc = f"{user}@{hostport}" if parts.scheme in ("ssh", "git+ssh") and user else hostport
    return urlunsplit(parts._replace(netloc=netloc))


def _source_descriptor(repository: str, revision: str) -> dict[str, Any]:
    """The repository as an SPDX-style VCS URI (``git+https://host/repo@rev``), as SLSA's examples do."""
    url = repository
    scp = _SCP_LIKE.match(url)
    if scp:  # "git@host:owner/repo.git" is not a URI; it means ssh://git@host/owner/repo.git
        url = f"ssh://{scp['user']}@{scp['host']}/{scp['path']}"
    if not url.startswith("git+") and not url.startswith("git://"):
        url = f"git+{url}"
    descriptor: dict[str, Any] = {"uri": f"{url}@{revision}" if revision else url}
    if _GIT_COMMIT.match(revision.lower()):
        descriptor["digest"] = {"gitCommit": revision.lower()}
    return descriptor


def _base_descriptor(base: str, base_digest: str) -> dict[str, Any]:
    descriptor: dict[str, Any] = {"name": "base", "uri": "file://" + quote(base or "/", safe="/")}
    if base_digest:
        algorithm, _, value = base_digest.partition(":")
        if algorithm != "sha256":
            raise ValueError(f"base_digest: expected 'sha256:<hex>', got {base_digest[:80]!r}")
        descriptor["digest"] = {"sha256": _check_sha256(value, "base_digest")}
    return descriptor
