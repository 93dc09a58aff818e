"""Who sent a webhook: its address, believed through trusted proxies only.

Used for the per-sender rate limit and the policy's source networks.
"""

from __future__ import annotations


def sender_address(
    remote_addr: str | None, forwarded_for: str | None, trusted: frozenset[str]
) -> str:
    """The address a webhook came from, for rate limiting.

    Behind a proxy every request comes from the proxy's address; when the direct peer is one of
    ``INGEST_TRUSTED_PROXIES`` the sender is the right-most ``X-Forwarded-For`` hop that is not a
    trusted proxy itself (hops further left can be forged by the client). Without trusted
    proxies the header is ignored, so a sender cannot dodge the limit by inventing one.
    """
    peer = remote_addr or "-"
    if not trusted or peer not in trusted or not forwarded_for:
        return peer
    for hop in reversed(forwarded_for.split(",")):
        hop = hop.strip()
        if hop and hop not in trusted:
            return hop
    return peer
