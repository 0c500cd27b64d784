"""The URL policy: every spelling of an internal address is refused, with a fake resolver."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import pytest

from morag_worker.core.transfer.url_policy import (
    Origin,
    UnsafeURL,
    UrlPolicy,
    check_url,
    normalise_url,
    origin_of,
    refusal_reason,
)

pytestmark = pytest.mark.unit

HUB = "https://hub.example.org"
DNS: dict[str, list[str]] = {
    "public.example": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"],
    "hub.example.org": ["10.0.0.5"],  # a hub on a private network is fine: it is exempt
    "sub.hub.example.org": ["10.0.0.6"],
    "rebind.example": ["93.184.216.34", "127.0.0.1"],  # one bad answer is enough
    "internal.example": ["192.168.1.10"],
    "metadata.example": ["169.254.169.254"],
    "v6-loopback.example": ["::1"],
    "mapped.example": ["::ffff:10.1.2.3"],
    "cgnat.example": ["100.64.0.7"],
    "nothing.example": [],
}


class FakeResolver:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, host: str, port: int) -> Sequence[str]:
        self.asked.append(host)
        if host not in DNS:
            raise OSError(f"unknown host {host}")
        return DNS[host]


def check(url: str, resolver: FakeResolver | None = None) -> None:
    check_url(url, hub_origin=HUB, resolver=resolver or FakeResolver())


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/", "loopback"),
        ("http://127.0.0.1.:8080/", "loopback"),
        ("http://2130706433/", "loopback"),  # decimal
        ("http://0x7f000001/", "loopback"),  # hex
        ("http://0x7f.1/", "loopback"),  # hex, short form
        ("http://0177.0.0.1/", "loopback"),  # octal
        ("http://017700000001/", "loopback"),  # octal, one part
        ("http://127.1/", "loopback"),  # short form
        ("http://127.0.1/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://[0:0:0:0:0:0:0:1]/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),  # IPv4-mapped IPv6
        ("http://[::ffff:7f00:1]/", "loopback"),
        ("http://[2002:7f00:1::]/", "loopback"),  # 6to4
        ("http://[64:ff9b::7f00:1]/", "loopback"),  # NAT64
        ("http://localhost/", "localhost"),
        ("http://LOCALHOST:9000/", "localhost"),
        ("http://api.localhost/", "localhost"),
        ("http://localhost./", "localhost"),
        ("http://ｌｏｃａｌｈｏｓｔ/", "localhost|cannot be parsed"),  # fullwidth letters
        ("http://10.0.0.1/", "private"),
        ("http://172.16.5.4/", "private"),
        ("http://192.168.0.1/", "private"),
        ("http://0xc0a80001/", "private"),
        ("http://[fc00::1]/", "private"),
        ("http://[::ffff:192.168.0.1]/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://2852039166/", "metadata"),  # 169.254.169.254 as an integer
        ("http://[fd00:ec2::254]/", "metadata"),
        ("http://[::ffff:169.254.169.254]/", "metadata"),
        ("http://169.254.1.1/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[ff02::1]/", "multicast"),
        ("http://100.64.0.1/", "CGNAT"),
        ("http://100.127.255.254/", "CGNAT"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://0/", "unspecified"),
        ("http://[::]/", "unspecified"),
        ("http://240.0.0.1/", "reserved"),
        ("http://255.255.255.255/", "reserved"),
        ("http://192.0.2.1/", "private"),  # documentation range
        ("http://rebind.example/", "loopback"),
        ("http://internal.example/", "private"),
        ("http://metadata.example/", "metadata"),
        ("http://v6-loopback.example/", "loopback"),
        ("http://mapped.example/", "private"),
        ("http://cgnat.example/", "CGNAT"),
        ("http://nothing.example/", "no address"),
        ("http://256.1.1.1/", "not a valid IPv4"),
        ("http://1.2.3.4.5/", "not a valid IPv4"),
        ("http://08.0.0.1/", "not a valid IPv4"),
        ("http://0x100000000/", "not a valid IPv4"),
    ],
)
def test_internal_targets_are_refused_in_any_spelling(url: str, reason: str) -> None:
    with pytest.raises(UnsafeURL, match=reason):
        check(url)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "scheme 'file'"),
        ("ftp://public.example/x", "scheme 'ftp'"),
        ("gopher://public.example/", "scheme 'gopher'"),
        ("//public.example/x", "cannot be parsed"),
        ("http://user:secret@public.example/", "user name or password"),
        ("http://user@public.example/", "user name or password"),
        ("http://@public.example/", "user name or password"),
        ("http://public.example\\@127.0.0.1/", "user name or password"),
        ("http://public.example/a b", "spaces or control characters"),
        ("http://public.example/\x00", "spaces or control characters"),
        ("http:///path-only", "cannot be parsed|without a host"),
    ],
)
def test_malformed_or_unsupported_urls_are_refused(url: str, reason: str) -> None:
    with pytest.raises(UnsafeURL, match=reason):
        check(url)


def test_refusals_never_repeat_a_password() -> None:
    with pytest.raises(UnsafeURL) as caught:
        check("https://alice:hunter2-secret@public.example/")
    assert "hunter2" not in str(caught.value)


def test_public_names_and_addresses_are_allowed() -> None:
    resolver = FakeResolver()
    check("https://public.example/file.pdf?x=1", resolver)
    check("http://93.184.216.34:8080/x")
    check("http://[2606:4700::1111]/")
    assert resolver.asked == ["public.example"]


def test_every_resolved_address_is_checked() -> None:
    with pytest.raises(
        UnsafeURL, match=r"rebind.example \(it resolves to 127.0.0.1\): it is a loopback address"
    ):
        check("http://rebind.example/")


def test_resolver_failure_propagates_as_oserror() -> None:
    with pytest.raises(OSError, match="unknown host"):
        check("http://no-such-host.example/")


@pytest.mark.parametrize("url", [HUB + "/api/v1/files/abc", "https://HUB.example.org:443/x", HUB + "./x"])
def test_the_hub_exact_origin_is_exempt(url: str) -> None:
    resolver = FakeResolver()
    check(url, resolver)
    assert resolver.asked == []  # not even resolved


@pytest.mark.parametrize(
    "url", ["http://hub.example.org/x", "https://hub.example.org:8443/x", "https://sub.hub.example.org/x"]
)
def test_other_origins_on_the_hub_host_are_not_exempt(url: str) -> None:
    with pytest.raises(UnsafeURL, match="private"):
        check(url)


def test_a_hub_url_with_credentials_is_still_refused() -> None:
    with pytest.raises(UnsafeURL, match="user name or password"):
        check("https://me:pw@hub.example.org/x")


def test_loopback_hub_is_exempt_but_only_on_its_port() -> None:
    policy = UrlPolicy(hub_origin="http://127.0.0.1:8000", resolver=FakeResolver())
    policy.check("http://127.0.0.1:8000/api/v1/files/1")
    with pytest.raises(UnsafeURL, match="loopback"):
        policy.check("http://127.0.0.1:8001/")


def test_trusted_origins_are_exempt_but_are_not_the_hub() -> None:
    policy = UrlPolicy(
        hub_origin=HUB, resolver=FakeResolver(), trusted_origins=frozenset({"http://127.0.0.1:9000"})
    )
    policy.check("http://127.0.0.1:9000/f")
    assert not policy.is_hub("http://127.0.0.1:9000/f")
    assert policy.is_hub(HUB + "/f") and policy.is_hub("https://hub.example.org:443/g")
    assert not policy.is_hub("http://hub.example.org/f")


def test_production_policy_has_no_exemptions_but_the_hub() -> None:
    assert UrlPolicy().trusted_origins == frozenset()
    with pytest.raises(UnsafeURL):
        UrlPolicy(resolver=FakeResolver()).check("http://127.0.0.1:9000/")


def test_origin_normalises_case_default_ports_and_brackets() -> None:
    assert origin_of("HTTPS://Hub.Example.org/x") == Origin("https", "hub.example.org", 443)
    assert origin_of("http://[::1]:80/") == Origin("http", "::1", 80)
    assert origin_of("http://h:8080") == Origin("http", "h", 8080)


@pytest.mark.parametrize(
    ("peer", "refused"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("10.1.1.1", True),
        ("169.254.169.254", True),
        ("93.184.216.34", False),
    ],
)
def test_the_connected_peer_is_checked(peer: str, refused: bool) -> None:
    policy = UrlPolicy(hub_origin=HUB, resolver=FakeResolver())
    if refused:
        with pytest.raises(UnsafeURL, match=f"connection reached {peer}"):
            policy.check_peer("http", "public.example", 80, peer)
    else:
        policy.check_peer("http", "public.example", 80, peer)
    policy.check_peer("https", "hub.example.org", 443, "10.0.0.5")  # the hub may live anywhere


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("8.8.8.8", True),
        ("1.1.1.1", True),
        ("2606:4700::1111", True),
        ("127.255.255.254", False),
        ("10.255.255.255", False),
        ("::ffff:8.8.8.8", True),
        ("::ffff:10.0.0.1", False),
        ("64:ff9b::808:808", True),  # NAT64 of a public address
        ("64:ff9b::a00:1", False),  # NAT64 of a private one
        ("fe80::1%eth0", False),
        ("100.100.100.200", False),  # Alibaba metadata
        ("198.18.0.1", False),  # benchmarking range
    ],
)
def test_refusal_reason_table(address: str, allowed: bool) -> None:
    assert (refusal_reason(ipaddress.ip_address(address)) is None) is allowed


def test_a_remembered_url_is_refused_or_parsed_as_the_first_time() -> None:
    """normalise_url and the origin are remembered per string (a download asks four times)."""
    for _ in range(2):
        assert origin_of("HTTP://Example.COM:8080/a b".replace(" ", "%20")).host == "example.com"
        with pytest.raises(UnsafeURL):
            normalise_url("http://example.com/a\u00a0b")  # a Unicode space is refused every time
        with pytest.raises(UnsafeURL):
            origin_of("ftp://example.com/f")
