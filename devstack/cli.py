"""``vski-realtime``: the dev stack and the small tools that show it working.

vski-realtime dev       # Redis (embedded if REDIS_URL is unset), ingest, 2 fanout, console
vski-realtime token     # a dev token signed with JWT_SECRET (or the stack's stored dev secret)
vski-realtime post      # post a sample webhook to ingest
vski-realtime listen    # open the WebSocket like the SDK and print events as they arrive
vski-realtime claims    # what a token carries (to write policy rules)
vski-realtime revoke    # cut a user or a token off on every node
vski-realtime status    # the operations view as tables: nodes, busiest collections, groups

One module for every subcommand (~470 lines): each is a short function over the pieces in
``devstack/`` and ``common/`` (the operations tables are ``devstack/status.py``), and the
argument parser that names them all is easier to read in one place.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import jwt

from common.config import ConfigError
from common.policy import PolicyError
from common.policy_source import read_policy
from devstack import state as st
from devstack.banner import render
from devstack.client import listen, post_json, post_webhook, realtime_url, sample_webhook
from devstack.ports import port_is_free
from fanout.settings import parse_processes

DEFAULT_INGEST = "http://127.0.0.1:8000"
DEFAULT_FANOUT = "ws://127.0.0.1:8080"


def _fail(message: str, code: int = 2) -> int:
    sys.stderr.write(f"vski-realtime: {message}\n")
    return code


# -- dev -------------------------------------------------------------------------------------------


def cmd_dev(args: argparse.Namespace) -> int:
    from devstack.console_server import ConsoleConfig, ConsoleServer
    from devstack.embedded_redis import NoRedisBinary
    from devstack.example_proxy import ExampleProxy
    from devstack.stack import Stack, StackOptions

    if args.fanout_nodes < 1 or args.ingest_workers < 1:
        return _fail("--fanout-nodes and --ingest-workers must be at least 1")
    try:
        processes = parse_processes(args.fanout_processes)
    except ConfigError as exc:
        return _fail(f"--fanout-processes: {exc}")
    state = st.state_dir(args.state_dir)
    try:
        lock = st.lock_state(state)  # held until this process exits
    except st.StateBusy as exc:
        return _fail(str(exc))
    wanted = {"--ingest-port": args.ingest_port}
    for i in range(args.fanout_nodes):
        wanted[f"--fanout-port (node {i + 1})"] = args.fanout_port + i
    if not args.no_console:
        wanted["--console-port"] = args.console_port
    if args.proxy_port:
        wanted["--proxy-port"] = args.proxy_port
    for flag, port in wanted.items():
        if not port_is_free(port, args.host):
            return _fail(f"port {port} is already in use: choose another with {flag.split()[0]}")
    if len(set(wanted.values())) != len(wanted):
        return _fail("the ports overlap: fanout nodes use --fanout-port and the ports after it")

    if args.policy:
        args.policy = str(Path(args.policy).resolve())
        try:
            read_policy(args.policy)  # the tiers would refuse to start: say why here
        except PolicyError as exc:
            return _fail(f"--policy: {exc}")
    secret, source = st.dev_secret(state)
    key, key_source = st.admin_key(state)
    proxy = ExampleProxy(args.host, args.proxy_port, secret)
    redis_url = os.environ.get("REDIS_URL", "").strip() or None
    stack = Stack(
        StackOptions(
            state=state,
            host=args.host,
            ingest_port=args.ingest_port,
            ingest_workers=args.ingest_workers,
            fanout_port=args.fanout_port,
            fanout_nodes=args.fanout_nodes,
            fanout_processes=processes,
            console_port=args.console_port,
            redis_port=args.redis_port,
            redis_url=redis_url,
            secret=secret,
            policy=args.policy,
            admin_key=key,
            proxy_url=proxy.url,
            echo=None if args.quiet else sys.stdout,
        )
    )

    stop = threading.Event()
    started = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()
        if not started.is_set():
            raise KeyboardInterrupt  # interrupt a start that is still waiting for readiness

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    console: ConsoleServer | None = None
    code = 0
    try:
        print(f"starting the dev stack (state in {state})", flush=True)
        proxy.start()
        stack.start()
        if not args.no_console:
            console = ConsoleServer(
                args.host,
                args.console_port,
                ConsoleConfig(
                    ingest_url=stack.ingest_url,
                    fanout_urls=stack.fanout_urls,
                    token=lambda sub: st.mint_token(secret, sub=sub[:64]),
                    webhook_token=lambda: st.mint_token(secret, sub=st.WEBHOOK_SUB),
                    db=args.db,
                    collection=args.collection,
                ),
            ).start()
        console_url = f"http://{stack.public_host}:{args.console_port}" if console else None
        redis_note = (
            f"{stack.redis_url} (embedded: {stack.redis.source}, data in {stack.redis.data_dir})"
            if stack.redis
            else f"{stack.redis_url} (REDIS_URL)"
        )
        st.write_stack_info(
            state,
            {
                "ingest": stack.ingest_url,
                "fanout": stack.fanout_urls,
                "console": console_url,
                "redis": stack.redis_url,
                "ops": f"{stack.ingest_url}/admin/",
                "pids": stack.pids(),
                "supervisor": os.getpid(),
            },
        )
        started.set()
        print(
            render(
                redis=redis_note,
                ingest_url=stack.ingest_url,
                fanout_urls=stack.fanout_urls,
                console_url=console_url,
                token=st.mint_token(secret),
                webhook_token=st.mint_token(secret, sub=st.WEBHOOK_SUB),
                secret_source=source,
                policy=args.policy,
                proxy_url=proxy.url,
                ops_url=f"{stack.ingest_url}/admin/#key={key}",
                admin_key_source=key_source,
                db=args.db,
                collection=args.collection,
                state=str(state),
            ),
            flush=True,
        )
        stack.run_until_stopped(stop)
    except KeyboardInterrupt:
        pass
    except NoRedisBinary as exc:
        code = _fail(str(exc))
    except RuntimeError as exc:
        code = _fail(str(exc), 1)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup
        print("stopping the dev stack ...", flush=True)
        if console is not None:
            console.stop()
        stack.stop()
        proxy.stop()
        st.clear_stack_info(state)
        lock.close()
        print("stopped", flush=True)
    return code


# -- token / post / listen ---------------------------------------------------------------------


def _secret_for_tools(args: argparse.Namespace) -> str:
    secret, _ = st.dev_secret(st.state_dir(args.state_dir), create=False)
    return secret


def cmd_token(args: argparse.Namespace) -> int:
    try:
        secret = _secret_for_tools(args)
    except LookupError as exc:
        return _fail(str(exc))
    claims: dict[str, Any] = {}
    for item in args.claim:
        key, sep, value = item.partition("=")
        if not sep or not key.rstrip(":"):
            return _fail(f"--claim {item!r} must be key=value (or key:=JSON)")
        if key.endswith(":"):  # role:=["a","b"]: a JSON value
            try:
                claims[key[:-1]] = json.loads(value)
            except ValueError as exc:
                return _fail(f"--claim {item!r}: not JSON: {exc}")
        else:
            claims[key] = value
    print(st.mint_token(secret, sub=args.sub, ttl=args.ttl, **claims))
    return 0


def cmd_claims(args: argparse.Namespace) -> int:
    """Show what a token carries (not verified: no secret needed), to write policy rules."""
    token = args.token.strip()
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    try:
        header = jwt.get_unverified_header(token)
        payload = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError as exc:
        return _fail(f"not a JWT: {exc}")
    print(json.dumps({"header": header, "claims": payload}, indent=2, sort_keys=True))
    return 0


def _admin_key(args: argparse.Namespace) -> str:
    """``--admin-key``, else REALTIME_ADMIN_KEY, else the dev stack's; LookupError if none."""
    return str(args.admin_key or st.admin_key(st.state_dir(args.state_dir), create=False)[0])


def cmd_revoke(args: argparse.Namespace) -> int:
    """POST /admin/disconnect: close the sockets of a user or token on every node now."""
    try:
        key = _admin_key(args)
    except LookupError as exc:
        return _fail(str(exc))
    body: dict[str, Any] = {"user": args.user} if args.user else {"token_id": args.token_id}
    if args.until is not None:
        body["until"] = args.until
    url = _ingest_url(args) + "/admin/disconnect"
    try:
        status, answer = post_json(url, key, body)
    except OSError as exc:
        return _fail(f"cannot reach ingest at {url}: {exc}", 1)
    print(f"{status} {json.dumps(answer)}", flush=True)
    return 0 if status == 200 else 1


def cmd_status(args: argparse.Namespace) -> int:
    """The operations view in the terminal (devstack/status.py)."""
    from devstack.status import run

    try:
        key = _admin_key(args)
    except LookupError as exc:
        return _fail(str(exc))
    if args.watch is not None and args.watch <= 0:
        return _fail("--watch must be a positive number of seconds")
    if not 1 <= args.limit <= 100:
        return _fail("--limit must be from 1 to 100")
    return run(_ingest_url(args), key, watch=args.watch, as_json=args.json, limit=args.limit)


def _ingest_url(args: argparse.Namespace) -> str:
    if args.ingest:
        return str(args.ingest)
    info = st.read_stack_info(st.state_dir(args.state_dir))
    return str(info.get("ingest") or DEFAULT_INGEST)


def _fanout_url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url)
    info = st.read_stack_info(st.state_dir(args.state_dir))
    fanout = info.get("fanout") or [DEFAULT_FANOUT]
    return str(fanout[0])


def cmd_post(args: argparse.Namespace) -> int:
    try:
        token = args.token or st.mint_token(_secret_for_tools(args), sub=st.WEBHOOK_SUB)
    except LookupError as exc:
        return _fail(str(exc))
    try:
        record = json.loads(args.record) if args.record else None
    except ValueError as exc:
        return _fail(f"--record is not valid JSON: {exc}")
    if record is not None and not isinstance(record, dict):
        return _fail("--record must be a JSON object")
    url = _ingest_url(args)
    worst = 0
    for _ in range(args.count):
        body = sample_webhook(args.db, args.collection, args.action, record)
        try:
            status, answer = post_webhook(url, token, body)
        except OSError as exc:
            return _fail(f"cannot reach ingest at {url}: {exc} (is `vski-realtime dev` up?)", 1)
        print(f"{status} {json.dumps(answer)}", flush=True)
        if status != 200:
            worst = 1
    return worst


def cmd_listen(args: argparse.Namespace) -> int:
    try:
        token = args.token or st.mint_token(_secret_for_tools(args))
    except LookupError as exc:
        return _fail(str(exc))
    url = realtime_url(_fanout_url(args), args.db, token)

    def show(frame: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(frame), flush=True)
            return
        kind = frame.get("type")
        if isinstance(frame.get("events"), list):
            for ev in frame["events"]:
                data = ev.get("data") or {}
                line = f"{frame.get('collection')} {ev.get('id')} {data.get('action')} " + (
                    json.dumps(data.get("record"))
                )
                if ev.get("ackId"):
                    line += f" ackId={ev['ackId']}"
                print(line, flush=True)
        elif kind == "_DISCONNECTED":
            sys.stderr.write(f"# disconnected ({frame.get('reason')}); reconnecting in 3 s\n")
        else:
            sys.stderr.write(f"# {json.dumps(frame)}\n")
        sys.stderr.flush()

    collections = args.collection or ["posts"]
    sys.stderr.write(f"# listening to {', '.join(collections)} in {args.db}\n")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            listen(
                url,
                collections,
                last_id=args.last_id,
                group=args.group,
                on_frame=show,
                max_events=args.count,
                reconnect=not args.no_reconnect,
            )
        )
    return 0


# -- parser ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vski-realtime",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    state_help = "dev state folder (default: $VSKI_STATE_DIR or ./.vski)"
    p.add_argument("--state-dir", help=state_help)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("dev", help="run the whole local stack until Ctrl-C")
    d.add_argument("--host", default="127.0.0.1", help="bind address of every tier")
    d.add_argument("--ingest-port", type=int, default=8000)
    d.add_argument("--ingest-workers", type=int, default=2)
    d.add_argument("--fanout-port", type=int, default=8080, help="first node; next nodes +1")
    d.add_argument("--fanout-nodes", type=int, default=2)
    d.add_argument(
        "--fanout-processes",
        default="1",
        help="FANOUT_PROCESSES of each node: processes sharing its port, a number or auto",
    )
    d.add_argument("--console-port", type=int, default=8090)
    d.add_argument(
        "--proxy-port", type=int, default=0, help="the example subscribe proxy (0: any free port)"
    )
    d.add_argument("--no-console", action="store_true", help="do not serve the console page")
    d.add_argument("--redis-port", type=int, default=0, help="embedded Redis port (0: any free)")
    d.add_argument("--db", default="postgres", help="database used in the printed examples")
    d.add_argument("--collection", default="posts", help="collection used in the examples")
    d.add_argument("--quiet", action="store_true", help="tier logs only to <state>/logs")
    d.add_argument(
        "--policy",
        help="access policy file for both tiers (REALTIME_POLICY); "
        "an example: devstack/example-policy.toml",
    )
    d.add_argument("--state-dir", default=argparse.SUPPRESS, help=state_help)
    d.set_defaults(func=cmd_dev)

    t = sub.add_parser("token", help="print a dev token signed with the configured secret")
    t.add_argument("--sub", default="dev", help="the token's subject (user id)")
    t.add_argument("--ttl", type=float, default=st.TOKEN_TTL_SECONDS, help="seconds")
    t.add_argument(
        "--claim",
        action="append",
        default=[],
        help="extra claim: key=value (a string) or key:=JSON (e.g. teams:='[\"a\"]')",
    )
    t.add_argument("--state-dir", default=argparse.SUPPRESS, help=state_help)
    t.set_defaults(func=cmd_token)

    c = sub.add_parser(
        "claims",
        help="print a token's header and claims without verifying it (to write policy rules, "
        "e.g. the [webhooks] sender rule from a VSKI trigger's token)",
    )
    c.add_argument("token", help="the JWT (or 'Bearer <JWT>')")
    c.set_defaults(func=cmd_claims)

    rv = sub.add_parser(
        "revoke", help="cut a user or a token off now: closes its sockets on every node (4003)"
    )
    who = rv.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="the user id (@request.auth.id, id or sub of its tokens)")
    who.add_argument("--token-id", help="one token, by its jti claim")
    rv.add_argument("--until", type=float, help="unix time the revocation ends (default: +1 day)")
    rv.add_argument("--ingest", help=f"ingest base URL (default: running stack, {DEFAULT_INGEST})")
    rv.add_argument("--admin-key", help="REALTIME_ADMIN_KEY (default: env, then the dev stack's)")
    rv.add_argument("--state-dir", default=argparse.SUPPRESS, help=state_help)
    rv.set_defaults(func=cmd_revoke)

    stt = sub.add_parser(
        "status", help="the operations view as tables: nodes, busiest collections, groups"
    )
    stt.add_argument("--ingest", help=f"ingest base URL (default: running stack, {DEFAULT_INGEST})")
    stt.add_argument("--admin-key", help="REALTIME_ADMIN_KEY (default: env, then the dev stack's)")
    stt.add_argument("--watch", type=float, metavar="SECONDS", help="redraw every SECONDS")
    stt.add_argument("--json", action="store_true", help="print the API's answers as JSON")
    stt.add_argument("--limit", type=int, default=10, help="collections shown (default 10)")
    stt.add_argument("--state-dir", default=argparse.SUPPRESS, help=state_help)
    stt.set_defaults(func=cmd_status)

    po = sub.add_parser("post", help="post a sample webhook to ingest")
    po.add_argument("--ingest", help=f"ingest base URL (default: running stack, {DEFAULT_INGEST})")
    po.add_argument("--db", default="postgres")
    po.add_argument("--collection", default="posts")
    po.add_argument("--action", default="create", choices=["create", "update", "delete"])
    po.add_argument("--record", help='record JSON, e.g. \'{"id":"r1","title":"Hi"}\'')
    po.add_argument("--count", type=int, default=1)
    po.add_argument("--token", help="bearer token (default: a fresh dev token)")
    po.add_argument("--state-dir", default=argparse.SUPPRESS, help=state_help)
    po.set_defaults(func=cmd_post)

    li = sub.add_parser("listen", help="subscribe like the SDK and print events")
    li.add_argument("--url", help=f"fanout base URL (default: the running stack, {DEFAULT_FANOUT})")
    li.add_argument("--db", default="postgres")
    li.add_argument("--collection", action="append", help="repeat for several (default: posts)")
    li.add_argument("--last-id", help="resume after this id (0: everything retained)")
    li.add_argument("--group", help="join this consumer group (events are ACKed)")
    li.add_argument("--count", type=int, help="exit after this many events")
    li.add_argument("--no-reconnect", action="store_true")
    li.add_argument("--json", action="store_true", help="print every frame as JSON")
    li.add_argument("--token", help="bearer token (default: a fresh dev token)")
    li.add_argument("--state-dir", default=argparse.SUPPRESS, help=state_help)
    li.set_defaults(func=cmd_listen)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    raise SystemExit(args.func(args))


if __name__ == "__main__":
    main()
