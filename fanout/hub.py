"""The hub: where events leave Redis for this node's clients (being written by the lead).

Interface used by the session layer (fanout/session.py):

    hub = Hub(settings: HubSettings, common: CommonSettings)
    await hub.start()                       # connects, starts the read loops
    await hub.stop()
    hub.readiness() -> tuple[bool, str]     # False when the Redis read path is down/stale
    outcome = await hub.subscribe(member, db, collection, last_id)   # replays, then live
        -> SubscribeOutcome(last_id: str, recovered: bool)
        raises SubscribeError(code, message) for bad input (e.g. too many subscriptions)
    hub.unsubscribe(member, db, collection) -> bool
    hub.remove(member)                      # on disconnect: drops all its subscriptions

A member is the session's object for one connection; the hub needs only:
    member.conn          -> websockets.asyncio.server.ServerConnection (for broadcast / send)
    member.overflowed()  -> called (sync) when its send buffer exceeds the cap; the session
                            closes the connection with close code 4008 "slow consumer"
"""
