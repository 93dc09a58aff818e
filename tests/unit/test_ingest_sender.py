from __future__ import annotations

from ingest.sender import sender_address

PROXY = frozenset({"10.0.0.9", "10.0.0.8"})


def test_without_trusted_proxies_the_header_is_ignored() -> None:
    assert sender_address("1.1.1.1", "9.9.9.9", frozenset()) == "1.1.1.1"


def test_untrusted_peer_cannot_claim_another_address() -> None:
    assert sender_address("1.1.1.1", "9.9.9.9", PROXY) == "1.1.1.1"


def test_right_most_untrusted_hop_is_the_sender() -> None:
    assert sender_address("10.0.0.9", "6.6.6.6, 2.2.2.2", PROXY) == "2.2.2.2"
    assert sender_address("10.0.0.9", "2.2.2.2, 10.0.0.8", PROXY) == "2.2.2.2"


def test_only_proxies_in_the_chain_falls_back_to_the_peer() -> None:
    assert sender_address("10.0.0.9", "10.0.0.8", PROXY) == "10.0.0.9"
    assert sender_address("10.0.0.9", None, PROXY) == "10.0.0.9"
    assert sender_address(None, None, PROXY) == "-"
