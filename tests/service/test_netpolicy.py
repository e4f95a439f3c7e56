"""Webhook address policy: only public addresses, checked without DNS at the API and with it on delivery."""

from __future__ import annotations

import socket

import pytest

from service.netpolicy import (
    WebhookResolutionError,
    WebhookTargetError,
    check_url_syntax,
    is_public,
    resolve_target,
)

INTERNAL = [
    "http://127.0.0.1:6379/",
    "http://10.0.0.5/hook",
    "http://172.16.3.4/hook",
    "http://192.168.1.1/hook",
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://[::1]:8080/hook",
    "http://[fd00::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",  # IPv4-mapped loopback
    "http://[64:ff9b::a9fe:a9fe]/hook",  # NAT64 of 169.254.169.254
    "http://[2002:7f00:1::]/hook",  # 6to4 of 127.0.0.1
    "http://[::7f00:1]/hook",  # IPv4-compatible
    "http://[::ffff:0:7f00:1]/hook",  # IPv4-translated
    "http://[fec0::1]/hook",  # site-local
    "http://0.0.0.0/hook",
    "http://100.64.0.1/hook",  # carrier-grade NAT
    "http://localhost/hook",
    "http://LOCALHOST./hook",
]


@pytest.mark.parametrize("url", INTERNAL)
def test_internal_targets_are_refused_without_dns(url: str) -> None:
    with pytest.raises(WebhookTargetError, match="public|this machine"):
        check_url_syntax(url)
    check_url_syntax(url, allow_private=True)  # on-prem deployments may allow them


@pytest.mark.parametrize(
    "url, message",
    [
        ("ftp://example.org/hook", "http:// or https://"),
        ("http:///hook", "a host"),
        ("https://user:secret@example.org/hook", "credentials"),
        ("http://example.org:99999/hook", "malformed"),
        (f"http://{'a' * 64}.com/hook", "malformed webhook host"),
        ("http://a..b.com/hook", "malformed webhook host"),
    ],
)
def test_malformed_urls_are_refused_even_when_private_is_allowed(url: str, message: str) -> None:
    with pytest.raises(WebhookTargetError, match=message):
        check_url_syntax(url, allow_private=True)


def test_public_literals_and_names_pass_the_syntax_check() -> None:
    check_url_syntax("https://93.184.215.14/hook")
    check_url_syntax("https://[2606:4700::1111]/hook")
    check_url_syntax("https://hooks.bureau.example/pikfix?token=1")  # names are vetted on delivery
    assert is_public("8.8.8.8") and not is_public("224.0.0.1") and not is_public("fe80::1%eth0")
    assert is_public("64:ff9b::808:808") and is_public("2002:808:808::")  # NAT64 / 6to4 of 8.8.8.8
    assert not is_public("2001:0:4136:e378:8000:63bf:3fff:fdd2")  # Teredo: judged by its IPv4 parts


def _answers(*addresses: str) -> list[tuple]:
    return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 443)) for a in addresses]


def test_resolution_vets_every_address_and_keeps_the_path(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(WebhookTargetError, match="not a public address"):
        resolve_target("http://127.0.0.1:8080/a")
    target = resolve_target("http://127.0.0.1:8080/hooks/pikfix?x=1", allow_private=True)
    assert (target.scheme, target.host, target.port, target.addresses) == ("http", "127.0.0.1", 8080, ("127.0.0.1",))
    assert target.path == "/hooks/pikfix?x=1"
    assert resolve_target("https://127.0.0.1", allow_private=True).port == 443
    with pytest.raises(WebhookResolutionError, match="cannot resolve"):
        resolve_target("http://no-such-host.invalid/hook")
    # A name that answers a public and an internal address (DNS rebinding bait) is refused outright.
    monkeypatch.setattr("service.netpolicy.socket.getaddrinfo", lambda *a, **k: _answers("93.184.215.14", "10.1.2.3"))
    with pytest.raises(WebhookTargetError, match="non-public 10.1.2.3"):
        resolve_target("https://hooks.bureau.example/pikfix")
    monkeypatch.setattr("service.netpolicy.socket.getaddrinfo",
                        lambda *a, **k: _answers("2606:4700::1111", "93.184.215.14", "2606:4700::1111"))
    target = resolve_target("https://hooks.bureau.example/pikfix")
    assert (target.host, target.port) == ("hooks.bureau.example", 443)
    assert target.addresses == ("2606:4700::1111", "93.184.215.14")  # every answer, in order, once
