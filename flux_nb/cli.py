"""``flux-nb``: run the local server, generate from a shell, read the history."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from flux_nb import protocol
from flux_nb.errors import FluxError

if TYPE_CHECKING:
    from flux_nb.server import ServerConfig

SERVER_KEYS_ENV = "FLUX_NB_SERVER_KEYS"
ADMIN_KEYS_ENV = "FLUX_NB_ADMIN_KEYS"


def announcing_server() -> type:
    """A uvicorn Server that prints its URL (then ``after``, if any) once it listens (port 0 picks a free one)."""
    import uvicorn

    class AnnouncingServer(uvicorn.Server):
        def __init__(self, config: uvicorn.Config, note: str, after: str = "") -> None:
            super().__init__(config)
            self.note, self.after = note, after

        async def startup(self, sockets: list | None = None) -> None:
            await super().startup(sockets)
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            host = f"[{host}]" if ":" in host else host
            print(f"flux_nb local server on http://{host}:{port} {self.note}", flush=True)
            if self.after:
                print(self.after, flush=True)

    return AnnouncingServer


def serve(args: argparse.Namespace) -> int:
    """Run the local BFL-compatible server in the foreground."""
    import uvicorn

    from flux_nb.server import create_app
    from flux_nb.server.embedded import start_poll_listener
    from flux_nb.server.guard import uvicorn_options

    AnnouncingServer = announcing_server()
    config = serve_config(args)
    if config is None:
        return 2
    try:
        app = create_app(config)
    except RuntimeError as exc:  # the engine cannot run here: say what to install
        print(f"flux-nb serve: {exc}", file=sys.stderr)
        return 2
    # The access log (one line per request: method, path with query, status) needs uvicorn's info level.
    log_level = "info" if args.access_log else "warning"
    options = {"log_level": log_level, "access_log": args.access_log, **uvicorn_options(config)}
    polls, after = None, ""
    if args.poll_port is not None:  # the polling listener starts first: no polling URL is handed out without it
        try:
            polls = start_poll_listener(app, args.host, args.poll_port, **options)
        except RuntimeError as exc:
            print(f"flux-nb serve: polling listener: {exc}", file=sys.stderr)
            return 2
        after = f"flux_nb polling URLs on {polls[2]} (same tasks; delivery URLs stay on the main address)"
    server = AnnouncingServer(
        uvicorn.Config(app, host=args.host, port=args.port, **options),
        f"(engine {args.engine}, latency {args.latency:g} s)",
        after,
    )
    try:
        server.run()
    finally:
        if polls is not None:
            polls[0].should_exit = True
            polls[1].join(timeout=5)
    return 0


def serve_config(args: argparse.Namespace) -> ServerConfig | None:
    """The server's settings from the command line and the key variables; None (said why) when it must not start."""
    from flux_nb.server import ServerConfig
    from flux_nb.server.exposure import exposure_refusal
    from flux_nb.server.faults import FaultPlan

    keys, admin_keys = (
        frozenset(k.strip() for k in os.environ.get(name, "").split(",") if k.strip())
        for name in (SERVER_KEYS_ENV, ADMIN_KEYS_ENV)
    )
    if args.require_key and not keys:
        print(f"flux-nb serve: --require-key needs the accepted keys in {SERVER_KEYS_ENV}", file=sys.stderr)
        return None
    if refusal := exposure_refusal(args.host, bool(keys or admin_keys), args.insecure_open):
        hint = f"list keys in {SERVER_KEYS_ENV}, or pass --insecure-open if this network is trusted"
        print(f"flux-nb serve: {refusal}; {hint}", file=sys.stderr)
        return None
    if args.insecure_open and not (keys or admin_keys):
        print(f"flux-nb serve: warning: listening on {args.host} without keys", file=sys.stderr)
    return ServerConfig(
        latency=args.latency,
        max_active=args.max_active,
        delivery_ttl=args.delivery_ttl,
        api_keys=keys,  # keys given are always checked; --require-key only insists that there are some
        engine=args.engine,
        engine_options=engine_options(args),
        public_url=args.public_url,
        poll_port=args.poll_port,
        faults=FaultPlan.parse(args.faults, args.fault_seed),
        allow_fetch=frozenset(args.allow_fetch),
        admin_keys=admin_keys,
        header_timeout=args.header_timeout,
        limit_concurrency=args.limit_concurrency,
    )


def engine_options(args: argparse.Namespace) -> dict[str, object]:
    """The diffusers options given on the command line."""
    options = {
        "model": args.model,
        "device": args.device,
        "dtype": args.dtype,
        "cpu_offload": args.cpu_offload or None,
        "compile": args.compile or None,
        "steps": args.steps,
    }
    return {k: v for k, v in options.items() if v is not None}


def generate(args: argparse.Namespace) -> int:
    """Generate one image and copy it to --out (or print where it is stored)."""
    from flux_nb.notebook.render import caption
    from flux_nb.session import Flux

    flux = Flux(endpoint=args.endpoint, history_dir=args.history_dir)
    try:
        result = flux.generate(
            args.prompt, seed=args.seed, width=args.width, height=args.height, model=args.model, images=args.image
        )
    finally:
        flux.close()
    path = result.path
    if args.out and path is not None:
        path = shutil.copyfile(path, args.out)
    print(f"{path}  ({caption(result)})")
    return 0


def history(args: argparse.Namespace) -> int:
    """Print the most recent history rows."""
    from flux_nb.history.store import HistoryStore

    frame = HistoryStore(args.history_dir).to_frame()
    columns = ["record_id", "created_at", "status", "model", "seed", "out_width", "out_height", "cost", "prompt"]
    if frame.empty:
        print(f"no history in {args.history_dir}")
        return 0
    print(frame[columns].tail(args.n).to_string(index=False, max_colwidth=50))
    return 0


def add_serve_parser(commands: argparse._SubParsersAction) -> None:
    """The ``serve`` sub-command's options."""
    p = commands.add_parser("serve", help="run the local BFL-compatible server")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8800, help="port (0 picks a free one)")
    p.add_argument("--latency", type=float, default=0.0, help="simulated generation seconds")
    p.add_argument("--max-active", type=int, default=protocol.MAX_ACTIVE_TASKS, help="in-flight tasks before 429")
    p.add_argument(
        "--delivery-ttl", type=float, default=protocol.DELIVERY_TTL_SECONDS, help="seconds a sample URL stays valid"
    )
    p.add_argument("--engine", default="preview", choices=["preview", "diffusers"], help="image engine")
    p.add_argument(
        "--model", help="diffusers engine: Hub id or local folder (default black-forest-labs/FLUX.2-klein-4B)"
    )
    p.add_argument("--device", help="diffusers engine: cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--dtype", help="diffusers engine: bfloat16 (default on GPU), float16, float32")
    p.add_argument("--cpu-offload", action="store_true", help="diffusers engine: one component on the GPU at a time")
    p.add_argument("--compile", action="store_true", help="diffusers engine: torch.compile the transformer blocks")
    p.add_argument("--steps", type=int, help="diffusers engine: inference steps (default 4, for distilled klein)")
    p.add_argument(
        "--require-key",
        action="store_true",
        help=f"refuse to start unless {SERVER_KEYS_ENV} lists keys (keys listed there are always checked; "
        f"{ADMIN_KEYS_ENV} lists keys that may also read every task's timings in /_flux/stats)",
    )
    p.add_argument(
        "--access-log", action="store_true", help="log every request (client, method, path, status) to stdout"
    )
    p.add_argument("--public-url", help="base URL written into polling and delivery URLs")
    p.add_argument(
        "--poll-port",
        type=int,
        help="also listen on this port (0 picks a free one) and point every polling_url there, on another host name",
    )
    p.add_argument(
        "--faults",
        default="",
        help="inject faults, e.g. 'submit_5xx=0.2,poll_5xx=0.2,drop_after=0.05,storm_429=#3|#4' (see server/faults.py)",
    )
    p.add_argument("--fault-seed", type=int, default=0, help="seed that makes injected faults repeatable")
    p.add_argument(
        "--allow-fetch",
        action="append",
        default=[],
        metavar="HOST",
        help="also fetch reference URLs from / post webhooks to this host, address or network (CIDR), although "
        "it is not public (loopback, private, link-local); repeatable. By default only public addresses",
    )
    p.add_argument(
        "--insecure-open",
        action="store_true",
        help=f"listen on a non-loopback --host without keys (else refused; keys go in {SERVER_KEYS_ENV})",
    )
    p.add_argument(
        "--header-timeout", type=float, default=10.0, help="seconds a connection has to send a request's headers"
    )
    p.add_argument("--limit-concurrency", type=int, default=1000, help="connections plus running requests before 503")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace], int]]]:
    parser = argparse.ArgumentParser(prog="flux-nb", description="FLUX.2 image generation: server, client, history.")
    commands = parser.add_subparsers(dest="command", required=True)

    add_serve_parser(commands)

    g = commands.add_parser("generate", help="generate one image")
    g.add_argument("prompt")
    g.add_argument("-s", "--seed", type=int)
    g.add_argument("-W", "--width", type=int)
    g.add_argument("-H", "--height", type=int)
    g.add_argument("-m", "--model")
    g.add_argument("-i", "--image", action="append", help="reference image path or URL (repeatable)")
    g.add_argument("-o", "--out", help="copy the image here")
    g.add_argument("--endpoint", help="server base URL (default: BFL cloud with BFL_API_KEY, else local)")
    g.add_argument("--history-dir", default=".flux")

    h = commands.add_parser("history", help="show recent requests")
    h.add_argument("-n", type=int, default=20, help="rows to show")
    h.add_argument("--history-dir", default=".flux")
    return parser, {"serve": serve, "generate": generate, "history": history}


def main(argv: Sequence[str] | None = None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    try:
        return handlers[args.command](args)
    except FluxError as exc:
        print(f"flux-nb: {exc.one_line()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
