"""The PVE client's pure parts: parameter encoding, fingerprints, error mapping, redaction."""

from __future__ import annotations

import logging

import pytest
from proxmoxer.core import ResourceException

from provision.errors import ConfigError
from provision.pve.api_errors import api_error
from provision.pve.client import encode_params, is_transient
from provision.pve.fingerprint import format_fingerprint, normalize_fingerprint
from provision.pve.redaction import RedactingFilter, redact, register_secrets


def test_booleans_go_as_1_and_0_and_none_is_not_sent() -> None:
    assert encode_params({"full": True, "force": False, "storage": None, "cores": 2}) == {
        "full": 1,
        "force": 0,
        "cores": 2,
    }


def test_fingerprint_accepts_colons_and_case_and_refuses_the_rest() -> None:
    hexdigits = "ab" * 32
    assert normalize_fingerprint(":".join(["AB"] * 32)) == hexdigits
    assert normalize_fingerprint(hexdigits.upper()) == hexdigits
    assert format_fingerprint(hexdigits) == ":".join(["AB"] * 32)
    for bad in ("AB:CD", "zz" * 32, "ab" * 20):
        with pytest.raises(ConfigError, match="not a SHA-256 fingerprint"):
            normalize_fingerprint(bad)


def test_resource_exception_becomes_our_error_with_pve_message_and_errors() -> None:
    error = api_error(
        "POST",
        "nodes/pve/qemu/9000/clone",
        ResourceException(
            400,
            "Bad Request",
            "Parameter verification failed.",
            errors={"newid": "property is missing and it is not optional"},
        ),
    )
    assert error.status == 400
    assert error.errors == {"newid": "property is missing and it is not optional"}
    assert "Parameter verification failed. newid: property is missing" in error.message
    assert "POST /nodes/pve/qemu/9000/clone" in error.message
    auth = api_error("GET", "nodes", ResourceException(401, "Unauthorized", "No ticket"))
    assert "authentication failed (No ticket)" in auth.message and auth.hint


def test_only_server_errors_that_may_pass_are_transient() -> None:
    missing = "Configuration file 'nodes/pve/qemu-server/101.conf' does not exist"
    assert not is_transient(ResourceException(500, missing, missing))
    assert not is_transient(ResourceException(400, "Bad Request", "Parameter verification"))
    assert is_transient(ResourceException(500, "proxy loop detected", "proxy loop detected"))
    assert is_transient(ResourceException(596, "Broken pipe", ""))


def test_secrets_are_redacted_from_log_records() -> None:
    register_secrets(["s3cr3t-token-value"])
    assert "s3cr3t" not in redact("Authorization: PVEAPIToken=root@pam!x=s3cr3t-token-value")
    cookie = redact("Cookie: PVEAuthCookie=PVE:root@pam:AAAA::sig")
    assert cookie == "Cookie: PVEAuthCookie=********"
    record = logging.LogRecord(
        "x", logging.DEBUG, __file__, 1, "sent %s", ("s3cr3t-token-value",), None
    )
    assert RedactingFilter().filter(record) and record.getMessage() == "sent ********"
