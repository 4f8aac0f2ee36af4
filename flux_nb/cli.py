"""``flux-nb``: run the local server, generate from a shell, read the history."""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from flux_nb import protocol
from flux_nb.cli_client import (
    EXIT_CODES,
    EXIT_INPUT,
    Handler,
    add_generate_parser,
    add_verb_parsers,
    exit_code,
    generate,
    in_cli_words,
)
from flux_nb.errors import FluxError, ValidationError
from flux_nb.notebook import commands
from flux_nb.notebook.command_line import KnownOptions, unknown_words

if TYPE_CHECKING:
    import socket

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

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            host = f"[{host}]" if ":" in host else host
            print(f"flux_nb local server on http://{host}:{port} {self.note}", flush=True)
            if self.after:
                print(self.after, flush=True)

    return AnnouncingServer


def serve(args: argparse.Namespace) -> int:
    """Run the local BFL-compatible server in the foreground (its engine on Ray Serve with ``--ray``)."""
    ray_only = [f for f, v in (("--replicas", args.replicas != 1), ("--max-replicas", args.max_replicas),
                ("--ray-address", args.ray_address), ("--gpus-per-replica", args.gpus_per_replica is not None),
                ("--cpus-per-replica", args.cpus_per_replica is not None)) if v]  # fmt: skip
    if ray_only and not args.ray:
        print(f"flux-nb serve: {', '.join(ray_only)} configure Ray Serve: add --ray", file=sys.stderr)
        return EXIT_INPUT
    config = serve_config(args)
    if config is None:
        return EXIT_INPUT
    serving = None
    try:
        if args.ray:
            serving = start_ray(args, config)
            if serving is None:
                return EXIT_INPUT
            app = serving.app()
        else:
            from flux_nb.server import create_app

            app = create_app(config)
        return run_server(args, config, app)
    except RuntimeError as exc:  # the engine cannot run here: say what to install
        print(f"flux-nb serve: {exc}", file=sys.stderr)
        return EXIT_INPUT
    finally:
        if serving is not None:
            serving.close()


def start_ray(args: argparse.Namespace, config: ServerConfig) -> Any:
    """The engine deployed on Ray Serve (its note on stderr: stdout's first line is the URL), or None."""
    from flux_nb.server.ray_serve import serve_with_ray

    options: dict[str, Any] = {"replicas": args.replicas, "ray_address": args.ray_address}
    options.update(gpus_per_replica=args.gpus_per_replica, max_replicas=args.max_replicas)
    if args.cpus_per_replica is not None:
        options["num_cpus_per_replica"] = args.cpus_per_replica
    try:
        serving = serve_with_ray(config, **options)
    except (RuntimeError, FluxError, ImportError) as exc:
        print(f"flux-nb serve --ray: {exc}", file=sys.stderr)
        return None
    print(f"flux-nb serve: {serving.note}", file=sys.stderr, flush=True)
    return serving


def run_server(args: argparse.Namespace, config: ServerConfig, app: Any) -> int:
    """Serve ``app`` (and the polling listener, with --poll-port) until stopped."""
    import uvicorn

    from flux_nb.server.connection_limits import uvicorn_options
    from flux_nb.server.embedded import start_poll_listener

    # The access log (one line per request: method, path with query, status) needs uvicorn's info level.
    log_level = "info" if args.access_log else "warning"
    options = {"log_level": log_level, "access_log": args.access_log, **uvicorn_options(config)}
    polls, after = None, ""
    if args.poll_port is not None:  # the polling listener starts first: no polling URL is handed out without it
        try:
            polls = start_poll_listener(app, args.host, args.poll_port, **options)
        except RuntimeError as exc:
            print(f"flux-nb serve: polling listener: {exc}", file=sys.stderr)
            return EXIT_INPUT
        after = f"flux_nb polling URLs on {polls[2]} (same tasks; delivery URLs stay on the main address)"
    where = f"engine {args.engine}" + (f" on Ray Serve, {args.replicas} replica(s)" if args.ray else "")
    server = announcing_server()(
        uvicorn.Config(app, host=args.host, port=args.port, **options), f"({where}, latency {args.latency:g} s)", after
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
    from flux_nb.server.fault_injection import FaultPlan

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
    try:
        options = engine_options(args)
    except ValidationError as exc:
        print(f"flux-nb serve: {exc}", file=sys.stderr)
        return None
    return ServerConfig(
        latency=args.latency,
        max_active=args.max_active,
        max_active_per_key=args.max_active_per_key,
        delivery_ttl=args.delivery_ttl,
        api_keys=keys,  # keys given are always checked; --require-key only insists that there are some
        engine=args.engine,
        engine_options=options,
        public_url=args.public_url,
        poll_port=args.poll_port,
        faults=FaultPlan.parse(args.faults, args.fault_seed),
        allow_fetch=frozenset(args.allow_fetch),
        admin_keys=admin_keys,
        header_timeout=args.header_timeout,
        limit_concurrency=args.limit_concurrency,
        body_timeout=args.body_timeout,
        reference_memory=args.reference_memory * 2**20,
    )


def engine_options(args: argparse.Namespace) -> dict[str, object]:
    """The diffusers options given on the command line; ValidationError for a malformed route mapping."""
    from flux_nb.server.engines.checkpoints import parse_model_for

    model_for = parse_model_for(args.model_for, args.model_map)
    if args.prompt_cache is not None and args.prompt_cache < 0:
        raise ValidationError(f"--prompt-cache must be 0 (no cache) or more, not {args.prompt_cache}")
    options = {
        "model": args.model,
        "model_for": model_for or None,
        "attention": args.attention,
        "prompt_cache": args.prompt_cache,
        "device": args.device,
        "dtype": args.dtype,
        "cpu_offload": args.cpu_offload or None,
        "compile": args.compile or None,
        "steps": args.steps,
    }
    return {k: v for k, v in options.items() if v is not None}


def add_serve_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``serve`` sub-command's options."""
    p = commands.add_parser("serve", help="run the local BFL-compatible server", formatter_class=DefaultsShown)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8800, help="port (0 picks a free one)")
    p.add_argument("--latency", type=float, default=0.0, help="simulated generation seconds")
    p.add_argument(
        "--max-active",
        type=int,
        default=10 * protocol.MAX_ACTIVE_TASKS,
        help="in-flight tasks on the whole server, all keys together, before 429 (default %(default)s)",
    )
    p.add_argument(
        "--max-active-per-key",
        type=int,
        default=protocol.MAX_ACTIVE_TASKS,
        help="in-flight tasks of one key (of everyone, without keys) before 429 (default %(default)s, as the BFL API)",
    )
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
    p.add_argument(
        "--compile",
        action="store_true",
        help="diffusers engine: torch.compile the transformer blocks (dynamic shapes), warmed up at start",
    )
    p.add_argument(
        "--model-for",
        action="append",
        default=[],
        metavar="ROUTE=PATH",
        help="diffusers engine: weights for one more route, e.g. flux-2-klein-9b=/models/klein-9b (repeatable); "
        "routes without weights are refused",
    )
    p.add_argument(
        "--model-map", metavar="FILE", help='diffusers engine: JSON {"route": "weights", ...} for more routes'
    )
    p.add_argument("--attention", help="diffusers engine: attention backend, e.g. flash, _flash_3, sage, _native_cudnn")
    p.add_argument(
        "--prompt-cache", type=int, help="diffusers engine: prompt encodings kept (default 32; 0 encodes every time)"
    )
    p.add_argument(
        "--steps", type=int, help="diffusers engine: inference steps (default 4 for distilled klein, 50 for base)"
    )
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
        help="inject faults, e.g. 'submit_5xx=0.2,poll_5xx=0.2,drop_after=0.05,storm_429=#3|#4'"
        " (see server/fault_injection.py)",
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
    p.add_argument(
        "--body-timeout",
        type=float,
        default=60.0,
        help="seconds a request's body has to arrive, after its headers, before 408 (default %(default)g)",
    )
    p.add_argument(
        "--reference-memory",
        type=int,
        default=1024,
        metavar="MB",
        help="memory decoded reference images may take at once, before 429 (default %(default)s MB)",
    )
    add_ray_options(p)


def add_ray_options(p: argparse.ArgumentParser) -> None:
    """``serve --ray``: the engine as a Ray Serve deployment (``pip install 'flux-nb[ray]'``)."""
    ray = p.add_argument_group("Ray Serve (pip install 'flux-nb[ray]')")
    ray.add_argument("--ray", action="store_true", help="run the engine as a Ray Serve deployment of replicas")
    ray.add_argument("--replicas", type=int, default=1, help="engine replicas, each one model copy (default 1)")
    ray.add_argument("--max-replicas", type=int, help="let Ray Serve scale from --replicas up to this on load")
    ray.add_argument("--ray-address", help="join this Ray cluster (ray://HOST:10001, auto); default: a local one")
    ray.add_argument(
        "--gpus-per-replica", type=float, help="GPUs per replica (default: 1 for diffusers, 0 for preview)"
    )
    ray.add_argument("--cpus-per-replica", type=float, help="CPUs per replica (default 1)")


# -- the command line ------------------------------------------------------------------------------------


class DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Help that ends each option with its default, where there is one to say and the text does not say it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or action.default is False or action.default in ([], "") or "default" in text:
            return text
        return super()._get_help_string(action)


def build_parser() -> tuple[KnownOptions, dict[str, Callable[[argparse.Namespace], int]]]:
    parser = KnownOptions(
        prog="flux-nb",
        description="FLUX.2 image generation: server, client, history.",
        epilog=EXIT_CODES,
    )
    subparsers: Any = parser.add_subparsers(dest="command", required=True)
    add_serve_parser(subparsers)
    add_generate_parser(subparsers)
    handlers: dict[str, Handler] = {"serve": serve, "generate": generate, **add_verb_parsers(subparsers)}
    parser.subcommands = subparsers.choices
    return parser, handlers


def main(argv: Sequence[str] | None = None) -> int:
    parser, handlers = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    if words and not words[0].startswith("-") and words[0] not in parser.subcommands:
        near = difflib.get_close_matches(words[0], parser.subcommands, n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        parser.error(f"unknown command {words[0]!r}{hint}; flux-nb --help lists them")
    try:
        args, extra = parser.parse_known_args(words)
        sub = parser.subcommands[args.command]
        if verb := commands.VERBS.get(args.command):
            args = commands.settle(verb, args, extra, sub)
        elif extra:  # say which option was meant, as the notebook magic does
            sub.error(unknown_words(extra, sub.known, f"flux-nb {args.command} --help"))
        return handlers[args.command](args)
    except FluxError as exc:
        print(f"flux-nb: {in_cli_words(exc)}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print("\nflux-nb: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
