"""Prebuild provenance: checked against the published in-toto/SLSA protobuf schemas, and the untrusted-tree walk."""

from __future__ import annotations

import calendar
import copy
import hashlib
import json
import re
from typing import Any

import pytest
from google.protobuf import json_format
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from in_toto_attestation.v1.statement import Statement

from gateway.provenance import (
    BUILD_TYPE,
    BuildFacts,
    OutputFile,
    rfc3339,
    statement,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LOG = hashlib.sha256(b"the log").hexdigest()
STARTED = calendar.timegm((2026, 1, 2, 3, 4, 5))
RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z\Z")


def facts(**overrides: Any) -> BuildFacts:
    values: dict[str, Any] = {
        "prebuild_id": "pb-123",
        "team": "backend",
        "author": "github:583231",
        "command": "make dist",
        "base": "/var/lib/wsgate/bases/debian",
        "base_digest": "sha256:" + hashlib.sha256(b"base").hexdigest(),
        "source_repository": "https://github.com/acme/app",
        "source_revision": COMMIT,
        "env_names": ("NPM_TOKEN", "CI"),
        "started": STARTED + 0.75,
        "finished": STARTED + 61.2,
        "outputs": (
            OutputFile("dist/app.tar.gz", hashlib.sha256(b"app").hexdigest(), 3),
            OutputFile("report.txt", hashlib.sha256(b"report").hexdigest(), 6),
        ),
        "log_sha256": LOG,
        "builder_id": "https://wsgate.example.test/",
        "builder_version": "0.1.0",
    }
    values.update(overrides)
    return BuildFacts(**values)


# --- the published schema ---------------------------------------------------------------------
# in-toto-attestation ships the protobuf bindings of Statement v1 and SLSA Provenance v1 and a
# Python validator for the Statement (and ResourceDescriptor).  It has no Python validator for the
# provenance predicate (only Go's), so `validate_provenance` applies the rules of the Go
# validator and the SLSA v1 field list ("required" fields) to the parsed message.


def parse(doc: dict[str, Any]) -> tuple[Any, Any]:
    """Parse strictly (unknown fields fail) into the published messages and run the validators."""
    pb = json_format.ParseDict(doc, statement_pb2.Statement(), ignore_unknown_fields=False)
    Statement.copy_from_pb(pb).validate()
    prov = json_format.ParseDict(doc["predicate"], provenance_pb2.Provenance(), ignore_unknown_fields=False)
    validate_provenance(prov)
    return pb, prov


def validate_provenance(prov: Any) -> None:
    assert prov.HasField("build_definition"), "buildDefinition required"
    bd = prov.build_definition
    assert bd.build_type, "buildDefinition.buildType required"
    assert bd.HasField("external_parameters"), "buildDefinition.externalParameters required"
    assert prov.HasField("run_details"), "runDetails required"
    rd = prov.run_details
    assert rd.HasField("builder"), "runDetails.builder required"
    assert rd.builder.id, "runDetails.builder.id required"
    for descriptor in [*bd.resolved_dependencies, *rd.byproducts, *rd.builder.builder_dependencies]:
        ResourceDescriptor.copy_from_pb(descriptor).validate()


def test_statement_parses_into_the_published_statement_and_provenance() -> None:
    doc = statement(facts())
    pb, prov = parse(doc)
    assert pb.type == "https://in-toto.io/Statement/v1"
    assert pb.predicate_type == "https://slsa.dev/provenance/v1"
    assert [s.name for s in pb.subject] == ["dist/app.tar.gz", "report.txt"]
    assert pb.subject[0].digest["sha256"] == hashlib.sha256(b"app").hexdigest()
    assert prov.build_definition.build_type == BUILD_TYPE
    assert prov.run_details.builder.id == "https://wsgate.example.test/"
    assert dict(prov.run_details.builder.version) == {"wsgate": "0.1.0"}
    assert prov.run_details.metadata.invocation_id == "pb-123"
    assert prov.run_details.metadata.started_on.seconds == STARTED
    # Nothing was dropped or reshaped on the way through the published messages.
    assert json_format.MessageToDict(pb) == doc


def test_the_strict_parse_has_teeth() -> None:
    doc = statement(facts())
    bad = copy.deepcopy(doc)
    bad["predicate"]["runDetails"]["metadata"]["exitCode"] = 0
    with pytest.raises(json_format.ParseError):
        parse(bad)
    bad = copy.deepcopy(doc)
    bad["subject"] = []
    with pytest.raises(ValueError, match="subject"):
        parse(bad)


def test_dependencies_follow_slsa_conventions() -> None:
    deps = statement(facts())["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert deps[0] == {"uri": f"git+https://github.com/acme/app@{COMMIT}", "digest": {"gitCommit": COMMIT}}
    assert deps[1] == {
        "name": "base",
        "uri": "file:///var/lib/wsgate/bases/debian",
        "digest": {"sha256": hashlib.sha256(b"base").hexdigest()},
    }

    # A ref is not a digest; scp-like remotes become URIs; the host root is file:///.
    doc = statement(
        facts(source_repository="git@github.com:acme/app.git", source_revision="main", base="/", base_digest="")
    )
    parse(doc)
    deps = doc["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert deps[0] == {"uri": "git+ssh://git@github.com/acme/app.git@main"}
    assert deps[1] == {"name": "base", "uri": "file:///"}
    assert doc["predicate"]["buildDefinition"]["externalParameters"]["source"] == {
        "repository": "git@github.com:acme/app.git",
        "revision": "main",
    }

    sha256_commit = "ab" * 32
    deps = statement(facts(source_revision=sha256_commit))["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert deps[0]["digest"] == {"gitCommit": sha256_commit}

    doc = statement(facts(source_repository="", source_revision=""))
    parse(doc)
    assert "source" not in doc["predicate"]["buildDefinition"]["externalParameters"]
    assert [d["name"] for d in doc["predicate"]["buildDefinition"]["resolvedDependencies"]] == ["base"]


def test_parameters_and_env_values_never_appear() -> None:
    secret = "npm_s3cr3t-value"
    doc = statement(facts())
    params = doc["predicate"]["buildDefinition"]
    assert params["externalParameters"] == {
        "command": "make dist",
        "base": "/var/lib/wsgate/bases/debian",
        "team": "backend",
        "source": {"repository": "https://github.com/acme/app", "revision": COMMIT},
    }
    assert params["internalParameters"] == {"author": "github:583231", "envNames": ["CI", "NPM_TOKEN"]}
    assert secret not in json.dumps(doc)
    # A caller that passes "NAME=value" would leak the value: refused.
    with pytest.raises(ValueError, match="env_names"):
        statement(facts(env_names=(f"NPM_TOKEN={secret}",)))


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://x-access-token:ghs_SECRET@github.com/acme/app", "https://github.com/acme/app"),
        ("https://glpat-SECRET@gitlab.com/acme/app.git", "https://gitlab.com/acme/app.git"),
        ("ssh://git:SECRET@example.test:2222/app", "ssh://git@example.test:2222/app"),
        ("git@github.com:acme/app.git", "git@github.com:acme/app.git"),
    ],
)
def test_credentials_in_the_source_url_never_appear(url: str, shown: str) -> None:
    doc = statement(facts(source_repository=url))
    parse(doc)
    assert "SECRET" not in json.dumps(doc)
    assert doc["predicate"]["buildDefinition"]["externalParameters"]["source"]["repository"] == shown


def test_no_outputs_attests_the_log() -> None:
    doc = statement(facts(outputs=()))
    parse(doc)
    assert doc["subject"] == [{"name": "prebuild.log", "digest": {"sha256": LOG}}]
    assert doc["predicate"]["runDetails"]["byproducts"] == [
        {"name": "prebuild.log", "digest": {"sha256": LOG}, "mediaType": "text/plain", "annotations": {"exitCode": 0}}
    ]
    # No subject with a digest at all is what the Statement spec forbids: refused, not emitted.
    with pytest.raises(ValueError, match="log_sha256"):
        statement(facts(outputs=(), log_sha256=""))


def test_times_are_rfc3339_utc() -> None:
    metadata = statement(facts())["predicate"]["runDetails"]["metadata"]
    assert metadata["startedOn"] == "2026-01-02T03:04:05Z"
    assert metadata["finishedOn"] == "2026-01-02T03:05:06Z"
    assert all(RFC3339_UTC.match(metadata[k]) for k in ("startedOn", "finishedOn"))
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    unknown = statement(facts(started=0.0, finished=0.0))["predicate"]["runDetails"]["metadata"]
    assert unknown == {"invocationId": "pb-123"}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"builder_id": ""}, "builder_id"),
        ({"log_sha256": "XYZ"}, "log_sha256"),
        ({"base_digest": "md5:abc"}, "base_digest"),
        ({"outputs": (OutputFile("../etc/passwd", LOG, 1),)}, "outputs"),
        ({"outputs": (OutputFile("/abs", LOG, 1),)}, "outputs"),
        ({"outputs": (OutputFile("a", "A" * 64, 1),)}, "sha256"),
        ({"outputs": (OutputFile("a", LOG, 1), OutputFile("a", LOG, 1))}, "duplicate"),
    ],
)
def test_facts_that_would_make_an_invalid_statement_are_refused(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        statement(facts(**overrides))
