"""`template create`'s pure parts: argument checks, the image URL, SHA256SUMS parsing, the file
name on the storage, and what makes an existing VM a usable labctl template."""

from __future__ import annotations

from typing import Any

import pytest

from provision.errors import ExitCode, ProxmoxError, UsageError
from provision.pve.cloud_image import (
    TemplateRequest,
    checksum_from_sums,
    image_url,
    parse_request,
)
from provision.pve.template import MARKER, template_problems

SUM = "a" * 64
OTHER = "b" * 64


def request(**overrides: Any) -> TemplateRequest:
    values: dict[str, Any] = {
        "flavor": "server",
        "storage": "local-lvm",
        "ip": "10.0.0.5/24",
        "gateway": "10.0.0.1",
    }
    values.update(overrides)
    return parse_request("noble", "ubuntu-24.04", **values)


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"flavor": "desktop"}, "--flavor must be one of server, kubuntu, not 'desktop'"),
        ({"ip": "10.0.0.5"}, "--ip 10.0.0.5 needs a prefix length, e.g. 10.0.0.5/24"),
        ({"ip": None}, "--gateway needs --ip"),
        ({"ip": None, "gateway": None}, "--ip CIDR is required"),
        ({"ip": "10.0.0.500/24"}, "is not an address with a prefix length"),
        ({"gateway": "gw.lan"}, "--gateway 'gw.lan' is not an IP address"),
    ],
)
def test_bad_arguments_are_one_line_usage_errors(overrides: dict[str, Any], says: str) -> None:
    with pytest.raises(UsageError) as raised:
        request(**overrides)
    assert says in raised.value.message
    assert "\n" not in str(raised.value)
    assert raised.value.exit_code == ExitCode.USAGE


def test_a_name_that_is_no_dns_name_is_refused() -> None:
    with pytest.raises(UsageError, match="invalid VM name"):
        parse_request("my_template", "ubuntu-24.04", flavor="server", storage="s", ip="10.0.0.5/24",
                      gateway=None)  # fmt: skip


def test_ubuntu_2404_is_the_official_noble_cloud_image_unless_a_mirror_is_set() -> None:
    official = "https://cloud-images.ubuntu.com/noble/current/noble-server-cloudimg-amd64.img"
    assert image_url("ubuntu-24.04") == official
    mirrored = image_url("ubuntu-24.04", "http://127.0.0.1:8080/")
    assert mirrored == "http://127.0.0.1:8080/noble/current/noble-server-cloudimg-amd64.img"


@pytest.mark.parametrize("image", ["ubuntu-22.04", "ftp://host/x.img", "https://", "x.img"])
def test_an_image_that_is_neither_known_nor_an_http_url_is_refused(image: str) -> None:
    with pytest.raises(UsageError, match="--image must be ubuntu-24.04 or an http"):
        image_url(image)


def test_the_request_derives_the_sums_url_the_ipconfig_and_a_file_name_per_checksum() -> None:
    made = request()
    assert made.sums_url == "https://cloud-images.ubuntu.com/noble/current/SHA256SUMS"
    assert made.ipconfig0 == "ip=10.0.0.5/24,gw=10.0.0.1"
    assert made.address == "10.0.0.5"
    assert made.import_filename(SUM) == "noble-server-cloudimg-amd64-aaaaaaaaaaaa.qcow2"
    kept = parse_request("t", "https://h/d/disk.raw", flavor="kubuntu", storage="s",
                         ip="10.0.0.5/24", gateway=None)  # fmt: skip
    assert kept.import_filename(OTHER) == "disk-bbbbbbbbbbbb.raw"
    assert kept.ipconfig0 == "ip=10.0.0.5/24"


def test_checksum_is_read_from_binary_and_text_mode_lines_of_sha256sums() -> None:
    sums = f"{OTHER} *noble-server-cloudimg-arm64.img\n{SUM.upper()} *noble.img\n{OTHER}  a.img\n"
    assert checksum_from_sums(sums, "noble.img") == SUM
    assert checksum_from_sums(sums, "a.img") == OTHER


def test_a_file_missing_from_sha256sums_or_listed_twice_differently_is_an_error() -> None:
    with pytest.raises(ProxmoxError, match="lists no checksum for noble.img"):
        checksum_from_sums(f"{SUM} *other.img\nnot a line\n", "noble.img")
    with pytest.raises(ProxmoxError, match="different checksums"):
        checksum_from_sums(f"{SUM} *noble.img\n{OTHER} *noble.img\n", "noble.img")


def good_config(**changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "template": 1,
        "agent": "enabled=1",
        "ide2": "local-lvm:vm-100-cloudinit,media=cdrom",
        "description": f"{MARKER} (server) from https://x/y.img sha256:{SUM}",
    }
    config.update(changes)
    return {k: v for k, v in config.items() if v is not None}


def test_a_labctl_template_has_no_problems() -> None:
    assert template_problems(good_config(), ("labctl",)) == []


@pytest.mark.parametrize(
    ("changes", "tags", "problem"),
    [
        ({"template": None}, ("labctl",), "it is not a template"),
        ({"agent": "0"}, ("labctl",), "its guest agent is not enabled (agent=1)"),
        ({"ide2": None}, ("labctl",), "it has no cloud-init drive"),
        ({}, (), "labctl did not make it"),
        ({"description": "by hand"}, ("labctl",), "labctl did not make it"),
    ],
)
def test_each_missing_property_of_a_template_is_named(
    changes: dict[str, Any], tags: tuple[str, ...], problem: str
) -> None:
    assert template_problems(good_config(**changes), tags) == [problem]
