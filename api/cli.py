"""`guardian serve`: the HTTP moderation API on uvicorn.

Registered through the `guardian.commands` entry point (`register`); also runnable as
`python -m api.cli serve ...` (the benchmark does that). Flags override the GUARDIAN_API_*
settings; they are passed on as environment variables so that every `--workers` process
builds the same app (each loads its own model).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from model.settings import GuardianSettings


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="run the HTTP moderation API (OpenAI-compatible /v1/moderations)"
    )
    p.add_argument("--host", help="listen address (GUARDIAN_API_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (GUARDIAN_API_PORT, default 8000)")
    p.add_argument("--policy", help="policy of requests that name none (GUARDIAN_DEFAULT_POLICY;"
                   " 'auto': the default policy of the query's language)")
    p.add_argument("--keys-file", help="API keys file (GUARDIAN_API_KEYS_FILE); none = open API")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes, each with its own model (default 1)")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    import uvicorn

    from api.app import create_app, load_config

    for flag, env in (("host", "GUARDIAN_API_HOST"), ("port", "GUARDIAN_API_PORT"),
                      ("policy", "GUARDIAN_DEFAULT_POLICY"),
                      ("keys_file", "GUARDIAN_API_KEYS_FILE")):
        value = getattr(args, flag, None)
        if value is not None:
            os.environ[env] = str(value)
    settings = GuardianSettings()
    load_config(settings)  # a bad policy id or keys file fails here, before any worker starts
    if not settings.api_keys_file:
        logging.getLogger("guardian.api").warning(
            "no GUARDIAN_API_KEYS_FILE: the API is open to anyone who can reach %s:%d",
            settings.api_host, settings.api_port)
    common = dict(host=settings.api_host, port=settings.api_port, log_level=args.log_level,
                  timeout_graceful_shutdown=30)
    if args.workers > 1:
        uvicorn.run("api.app:create_app_from_env", factory=True, workers=args.workers, **common)
    else:
        uvicorn.run(create_app(settings), **common)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(prog="guardian-api")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
