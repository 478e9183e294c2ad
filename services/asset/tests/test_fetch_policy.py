"""The SSRF address check on every range, without opening a connection."""

from __future__ import annotations

import ipaddress

import pytest

from pixsim_common.outbound import AddressPolicy, UrlRefused, check_url, resolve

pytestmark = pytest.mark.unit

STRICT = AddressPolicy()
REFUSED = {
    "127.0.0.1": "loopback",
    "127.255.0.9": "loopback",
    "::1": "loopback",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "172.31.255.254": "private",
    "192.168.1.1": "private",
    "100.64.0.1": "private",
    "fc00::1": "private",
    "fd12:3456::1": "private",
    "169.254.169.254": "link-local",
    "fe80::1": "link-local",
    "0.0.0.0": "not a unicast address",
    "::": "not a unicast address",
    "224.0.0.1": "not a unicast address",
    "ff02::1": "not a unicast address",
    "240.0.0.1": "not a unicast address",
    "::ffff:127.0.0.1": "loopback",
    "::ffff:10.0.0.1": "private",
    "::ffff:169.254.169.254": "link-local",
}


@pytest.mark.parametrize(("address", "why"), sorted(REFUSED.items()))
def test_internal_addresses_are_refused(address: str, why: str) -> None:
    assert STRICT.refusal(ipaddress.ip_address(address)) == why


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.4.4"]
)
def test_public_addresses_pass(address: str) -> None:
    assert STRICT.refusal(ipaddress.ip_address(address)) is None


def test_settings_can_allow_loopback_alone() -> None:
    local = AddressPolicy(allow_loopback=True)
    assert local.refusal(ipaddress.ip_address("127.0.0.1")) is None
    assert local.refusal(ipaddress.ip_address("::ffff:127.0.0.1")) is None
    assert local.refusal(ipaddress.ip_address("10.0.0.1")) == "private"
    assert local.refusal(ipaddress.ip_address("169.254.169.254")) == "link-local"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "BAD_SCHEME"),
        ("ftp://example.com/a", "BAD_SCHEME"),
        ("gopher://x/", "BAD_SCHEME"),
        ("http:///nohost", "BAD_URL"),
        ("http://user:pw@example.com/", "BAD_URL"),
        ("http://example.com:99999/", "BAD_URL"),
    ],
)
def test_urls_other_than_plain_http_are_refused(url: str, reason: str) -> None:
    with pytest.raises(UrlRefused) as raised:
        check_url(url)
    assert raised.value.reason == reason


async def test_literal_addresses_are_checked_without_dns() -> None:
    for host in ("169.254.169.254", "10.0.0.5", "::1"):
        with pytest.raises(UrlRefused):
            await resolve(host, 80, STRICT)
    assert str(await resolve("127.0.0.1", 80, AddressPolicy(allow_loopback=True))) == ("127.0.0.1")
