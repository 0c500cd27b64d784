"""The hub's connection layer without a server: the address gate, trusted proxies, and the bounds'
options and environment variables."""

from __future__ import annotations

import pytest

from morag_worker.core.cli.parser import build_parser
from morag_worker.core.server.hub.connections import AddressGate, is_trusted_proxy


def test_the_gate_counts_connections_per_address_and_frees_them() -> None:
    gate = AddressGate(max_per_address=2)
    assert gate.admit("10.0.0.1") is None and gate.admit("10.0.0.1") is None
    refusal = gate.admit("10.0.0.1")
    assert refusal is not None and refusal.startswith(b"HTTP/1.1 503 ")
    assert b"retry-after: 2" in refusal and b"connection: close" in refusal
    assert gate.admit("10.0.0.2") is None  # another address has its own count
    gate.release("10.0.0.1")
    assert gate.open_connections("10.0.0.1") == 1
    assert gate.admit("10.0.0.1") is None
    for _ in range(3):
        gate.release("10.0.0.1")
    assert gate.open_connections("10.0.0.1") == 0  # never below zero, and forgotten


def test_a_cap_of_zero_counts_but_never_refuses() -> None:
    gate = AddressGate(max_per_address=0)
    assert all(gate.admit("10.0.0.1") is None for _ in range(1000))


def test_a_refused_address_gets_429_until_its_time_is_up(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("morag_worker.core.server.hub.connections.time.monotonic", lambda: now[0])
    gate = AddressGate()
    gate.refuse("10.0.0.1", 30)
    refusal = gate.admit("10.0.0.1")
    assert refusal is not None and refusal.startswith(b"HTTP/1.1 429 ") and b"retry-after: 30" in refusal
    assert gate.open_connections("10.0.0.1") == 0  # a refused connection is not counted
    now[0] += 29.5
    assert gate.refused_for("10.0.0.1") == 1
    now[0] += 1
    assert gate.admit("10.0.0.1") is None


@pytest.mark.parametrize(
    ("address", "allowed", "trusted"),
    [
        ("127.0.0.1", "127.0.0.1", True),
        ("127.0.0.2", "127.0.0.1", False),
        ("10.1.2.3", "10.0.0.0/8, 192.168.0.1", True),
        ("192.168.0.1", ["10.0.0.0/8", "192.168.0.1"], True),
        ("203.0.113.9", "*", True),
        ("203.0.113.9", "", False),
        ("203.0.113.9", "unix:/run/proxy.sock", False),
        ("not-an-ip", "127.0.0.1", False),
    ],
)
def test_trusted_proxies_follow_forwarded_allow_ips(
    address: str, allowed: str | list[str], trusted: bool
) -> None:
    assert is_trusted_proxy(address, allowed) is trusted


def test_hub_bounds_come_from_options_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MORAG_HUB_MAX_IN_FLIGHT", "64")
    monkeypatch.setenv("MORAG_HUB_HEADER_TIMEOUT", "2.5")
    args = build_parser().parse_args(["hub", "--tasks-per-key", "7"])
    assert (args.max_in_flight, args.header_timeout, args.tasks_per_key) == (64, 2.5, 7)
    assert args.max_connections_per_address == 256  # the default
    args = build_parser().parse_args(["hub", "--max-in-flight", "9"])
    assert args.max_in_flight == 9  # the option wins over the environment


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("MORAG_HUB_MAX_IN_FLIGHT", "lots", "'lots' is not a whole number, 0 or more"),
        ("MORAG_HUB_RATE_WINDOW", "-1", "'-1' is not a whole number, 0 or more"),
        ("MORAG_HUB_BODY_TIMEOUT", "0", "'0' is not a number of seconds above 0"),
    ],
)
def test_a_bad_bound_in_the_environment_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str, value: str, said: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["hub"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert said in err and variable in err, err
    assert "Traceback" not in err
