"""The training subcommands of `guardian`: data build / data synth, train, eval, retrain."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from model.settings import GuardianSettings


def _settings(args) -> GuardianSettings:
    over = {}
    for key in ("data_dir", "dataset_dir", "adapter", "registry_dir", "flagged_table_dir"):
        val = getattr(args, key, None)
        if val:
            over[key] = val
    return GuardianSettings(**over)


def _train_rows(dataset_dir: str) -> list[dict]:
    from datasets import load_from_disk

    ds = load_from_disk(dataset_dir)
    return [dict(r) for r in ds["train"]]


def cmd_build(args) -> int:
    from training.build import STATS_MD, build

    s = _settings(args)
    stats = build(
        s.data_dir,
        s.dataset_dir,
        seed_dir=args.seed_dir,
        synth_dir=args.synth_dir,
        test_fraction=s.test_fraction,
    )
    c = stats["counts"]
    print(f"wrote {stats['total']} examples to {s.dataset_dir} ({STATS_MD}, stats.json)")
    print("split:", json.dumps(c["split"]))
    print("train labels:", json.dumps(c.get("train/label", {})))
    thin = ", ".join(
        f"{t['category']}/{t['language']}={t['train_examples']}" for t in stats["thin"]
    )
    print(f"thin (< {stats['thin_threshold']} train examples):", thin or "none")
    if stats["missing_files"]:
        print("missing:", ", ".join(stats["missing_files"]), file=sys.stderr)
    return 0


def cmd_synth(args) -> int:
    from training.seeds import default_seed_dir, read_seed_examples
    from training.synth import TeacherClient, synthesize

    s = _settings(args)
    out = Path(args.out)
    client = TeacherClient(
        s.teacher_url,
        s.teacher_model,
        s.teacher_api_key,
        rate_limit=s.teacher_rate_limit,
        max_retries=s.teacher_max_retries,
        cache_file=out / "cache.jsonl",
    )
    heldout: list[str] = []
    if Path(s.dataset_dir, "dataset_dict.json").is_file():
        from datasets import load_from_disk

        heldout = list(load_from_disk(s.dataset_dir)["test"]["text"])
    existing = [e.text for e in read_seed_examples(default_seed_dir())]
    stats = synthesize(
        client,
        out,
        languages=tuple(args.languages.split(",")),
        categories=tuple(args.categories.split(",")) if args.categories else None,
        n=args.n,
        rounds=args.rounds,
        existing=existing,
        heldout=heldout,
    )
    print(json.dumps(stats["kept"], indent=1))
    print(
        f"{stats['requests']} teacher requests; files in {out}; "
        f"use `guardian data build --synth-dir {out}`"
    )
    return 0


def _eval_fn(settings: GuardianSettings, dataset_dir: str, limit: int | None):
    """Eval callable for the model card: returns the Markdown table."""

    def run(adapter_dir: Path) -> str:
        from model.backends import create_backend
        from training.evaluate import evaluate, load_eval_sets, markdown_report

        s = settings.model_copy(update={"adapter": str(adapter_dir)})
        res = evaluate(
            create_backend(s), load_eval_sets(dataset_dir), batch_size=s.batch_size, limit=limit
        )
        return markdown_report(res).split("\n## ")[0]

    return run


def _recipe(args) -> str:
    stepped = args.steps or args.stage1_steps is not None or args.stage2_steps is not None
    if args.full:
        return "legacy"
    # continuing an adapter: legacy unless asked (the cached recipe needs its own layout)
    return args.recipe or ("legacy" if stepped or args.init_from else "cached")


def _source_caps(pairs: list[str] | None) -> dict | None:
    """--source-cap SOURCE=N (repeatable) over the mix's default caps; N=0 lifts a cap."""
    if not pairs:
        return None
    from training.mix import DEFAULT_CAPS

    caps = dict(DEFAULT_CAPS)
    for pair in pairs:
        source, sep, n = pair.partition("=")
        if not sep or not n.strip().isdigit():
            raise SystemExit(f"--source-cap wants SOURCE=N, got {pair!r}")
        if int(n) == 0:
            caps.pop(source.strip(), None)
        else:
            caps[source.strip()] = int(n)
    return caps


def cmd_train(args) -> int:
    from model.registry import Registry
    from training.seeds import ResponseBank, default_seed_dir
    from training.train import TrainConfig, train

    s = _settings(args)
    reg = Registry(s.registry_dir)
    version = args.version or (reg.next_version() if args.register else "")
    out = args.out or (str(reg.path(version)) if args.register else "./runs/guardian-adapter")
    steps = args.steps or s.train_steps
    cfg = TrainConfig.from_settings(
        s,
        out,
        stage1_steps=args.stage1_steps if args.stage1_steps is not None else steps // 2,
        stage2_steps=args.stage2_steps if args.stage2_steps is not None else steps - steps // 2,
        full=args.full,
        version=version,
        safe_unsafe_ratio=args.safe_unsafe_ratio,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        init_from=args.init_from or "",
        recipe=_recipe(args),
        stage1_epochs=args.stage1_epochs,
        stage2_epochs=args.stage2_epochs,
        train_layers=args.train_layers,
        max_tokens=args.max_tokens,
        resume=args.resume,
        source_caps=_source_caps(args.source_cap),
    )
    rows = _train_rows(s.dataset_dir)
    eval_fn = _eval_fn(s, s.dataset_dir, args.eval_limit) if args.eval_limit else None
    info = train(s, cfg, rows, responses=ResponseBank.load(default_seed_dir()), eval_fn=eval_fn)
    if not info.get("out_dir"):
        print(f"stopped after {info.get('steps_run')} steps; checkpoint kept, rerun with --resume")
        return 0
    k = min(10, len(info["losses"]))
    print(
        f"saved {cfg.out_dir} (version {cfg.version}); loss "
        f"{sum(info['losses'][:k]) / k:.3f} -> {sum(info['losses'][-k:]) / k:.3f} "
        f"in {info['train_seconds']:.0f}s on {info['device']}"
    )
    if args.register:
        from training.retrain import data_hash

        reg.register(cfg.version, parent=reg.current(), data_hash=data_hash(rows))
        reg.promote(cfg.version)
        print(f"registered and promoted {cfg.version} in {s.registry_dir}")
    return 0


def cmd_eval(args) -> int:
    from model.backends import create_backend
    from training.evaluate import evaluate, load_eval_sets, markdown_report

    s = _settings(args)
    if args.batch_size:
        s.batch_size = args.batch_size
    if args.labels_only:
        s.max_new_tokens = 0
    sets = load_eval_sets(args.data, split=args.split)
    res = evaluate(
        create_backend(s), sets, batch_size=s.batch_size, out_dir=args.out, limit=args.limit
    )
    print(markdown_report(res).split("\n## ")[0])
    print(f"wrote {args.out}/eval.json, EVAL.md, pr_curve.png")
    return 0


def cmd_suite(args) -> int:
    from training.suite import run_suite

    s = _settings(args)
    models = {}
    for spec in args.model:
        name, _, ref = spec.partition("=")
        if not ref:
            print(f"--model wants NAME=ADAPTER, got {spec!r}", file=sys.stderr)
            return 2
        models[name] = ref
    candidate = args.candidate or next(iter(models))
    res = run_suite(
        s, args.data or s.dataset_dir, models, args.out, candidate=candidate,
        test_cap=args.test_cap, heldout_cap=args.heldout_cap, dev_cap=args.dev_cap,
        probe=not args.no_probe, responses=args.responses,
    )
    print(f"wrote {args.out}/EVAL.md, suite.json, pr_curves.png")
    print(json.dumps(res["operating_points"], indent=1))
    return 0


def parse_since(value: str | None, now: float | None = None) -> float | None:
    """`--since`: ISO-8601, epoch seconds, or an age like 90m / 24h / 7d -> epoch seconds."""
    if not value:
        return None
    import re
    import time

    from model.verdict_diff import parse_time_ms

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([mhd])\s*", value)
    if m:
        unit = {"m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return (time.time() if now is None else now) - float(m.group(1)) * unit
    try:
        return parse_time_ms(value) / 1000.0
    except ValueError as exc:
        raise SystemExit(f"--since: {exc}; or an age like 24h / 7d") from None


def cmd_audit(args) -> int:
    from training.audit import audit_suite, markdown

    result = audit_suite(args.audit, args.suite)
    md = markdown(result, args.audit)
    (Path(args.suite) / "audit.json").write_text(json.dumps(result, indent=1) + "\n")
    (Path(args.suite) / "AUDIT.md").write_text(md, encoding="utf-8")
    print(md)
    return 0


def cmd_soup(args) -> int:
    from training.soup import soup

    out = soup(args.adapter, args.out, weights=args.weight, version=args.version or "")
    print(f"wrote {out}: the weighted mean of {len(args.adapter)} adapters")
    return 0


def cmd_retrain(args) -> int:
    from training.evaluate import load_eval_sets
    from training.retrain import retrain
    from training.seeds import ResponseBank, default_seed_dir
    from training.synth import TeacherClient

    s = _settings(args)
    if args.review_file:
        s.review_file = args.review_file
    relabel = None
    if s.teacher_url:
        relabel = TeacherClient(
            s.teacher_url, s.teacher_model, s.teacher_api_key, rate_limit=s.teacher_rate_limit
        ).relabel
    report = retrain(
        s,
        base_rows=_train_rows(s.dataset_dir),
        eval_sets=load_eval_sets(s.dataset_dir),
        relabel=relabel,
        steps=args.steps,
        max_seconds=args.max_minutes * 60 if args.max_minutes else None,
        since=parse_since(args.since),
        merge=args.merge,
        responses=ResponseBank.load(default_seed_dir()),
        progress=True,
        eval_limit=args.eval_limit,
    )
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="build the training dataset, synthesize data")
    dsub = data.add_subparsers(dest="data_command", required=True)
    b = dsub.add_parser("build", help="public files + seeds -> deduplicated DatasetDict + stats")
    b.add_argument("--data-dir", help="public data folder (setting data_dir)")
    b.add_argument("--dataset-dir", help="output folder (setting dataset_dir)")
    b.add_argument("--seed-dir",
                   help="seed folder (default: data/seeds; an installed wheel ships a copy)")
    b.add_argument("--synth-dir", help="output of `data synth` to include")
    b.set_defaults(func=cmd_build)
    sy = dsub.add_parser("synth", help="generate questions and responses with the teacher LLM")
    sy.add_argument("--out", default="./data/synth", help="output folder (also the resume cache)")
    sy.add_argument("--n", type=int, default=10, help="items asked per prompt")
    sy.add_argument("--rounds", type=int, default=1, help="prompts per category and language")
    sy.add_argument("--languages", default="ko,en")
    sy.add_argument("--categories", default="", help="comma-separated ids (default: all)")
    sy.add_argument("--dataset-dir", help="dataset whose test split must not be overlapped")
    sy.set_defaults(func=cmd_synth)

    t = subparsers.add_parser("train", help="two-stage fine-tune (LoRA or --full)")
    t.add_argument("--dataset-dir", help="dataset from `data build` (setting dataset_dir)")
    t.add_argument("--out", help="output folder (default ./runs/guardian-adapter)")
    t.add_argument("--steps", type=int, help="total steps (setting train_steps), split in two")
    t.add_argument("--stage1-steps", type=int)
    t.add_argument("--stage2-steps", type=int)
    t.add_argument("--full", action="store_true", help="full fine-tune instead of LoRA")
    t.add_argument("--version", default="")
    t.add_argument("--safe-unsafe-ratio", type=float, help="setting safe_unsafe_ratio")
    t.add_argument("--batch-size", type=int, help="setting train_batch_size")
    t.add_argument("--lr", type=float, help="setting learning_rate")
    t.add_argument("--init-from", help="adapter/model folder to continue from")
    t.add_argument("--eval-limit", type=int, help="eval N test examples per source for the card")
    t.add_argument("--register", action="store_true", help="save as next registry version, promote")
    t.add_argument("--recipe", choices=("cached", "legacy"),
                   help="cached: top layers over cached lower-layer states, in epochs (the "
                   "default); legacy: every layer, sampled steps (the default when --steps, "
                   "--stage1/2-steps, --full or --init-from is given; --init-from with "
                   "--recipe cached continues an adapter of the cached layout)")
    t.add_argument("--stage1-epochs", type=float, help="cached recipe: SFT epochs over the mix")
    t.add_argument("--stage2-epochs", type=float, help="cached recipe: multi-task epochs")
    t.add_argument("--train-layers", type=int, help="cached recipe: top layers given LoRA")
    t.add_argument("--max-tokens", type=int, help="query tokens kept (setting train_max_tokens)")
    t.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint beside --out (same data order)")
    t.add_argument("--source-cap", action="append", metavar="SOURCE=N",
                   help="cached recipe: rows of SOURCE per epoch (default caps: training/mix.py; "
                   "0 = no cap); repeatable")
    t.set_defaults(func=cmd_train)

    su = subparsers.add_parser(
        "suite", help="held-out sources, per language and category, floor rows, dev thresholds"
    )
    su.add_argument("--data", help="dataset from `data build` (setting dataset_dir)")
    su.add_argument("--model", action="append", required=True,
                    help="NAME=ADAPTER (an adapter folder, `default` or `none`); repeatable")
    su.add_argument("--candidate", help="the model whose thresholds and responses are reported")
    su.add_argument("--out", required=True, help="report folder (scores cached there)")
    su.add_argument("--test-cap", type=int, default=250, help="test rows per source")
    su.add_argument("--heldout-cap", type=int, default=800, help="held-out rows per source")
    su.add_argument("--dev-cap", type=int, default=150, help="dev rows per source")
    su.add_argument("--responses", type=int, default=200, help="unsafe test queries decoded")
    su.add_argument("--no-probe", action="store_true", help="skip the frozen-base probe floor")
    su.set_defaults(func=cmd_suite)

    au = subparsers.add_parser(
        "audit", help="a suite's models against a reader's audit of a mislabelled source"
    )
    au.add_argument("--audit", required=True, help="audit JSONL (data/audits/)")
    au.add_argument("--suite", required=True, help="a `guardian suite` report folder")
    au.set_defaults(func=cmd_audit)

    so = subparsers.add_parser(
        "soup", help="one LoRA adapter that is the weighted mean of several (a model soup)"
    )
    so.add_argument("--adapter", action="append", required=True, help="an adapter; repeatable")
    so.add_argument("--weight", action="append", type=float,
                    help="one per --adapter, in order (default: equal weights)")
    so.add_argument("--out", required=True, help="folder for the soup adapter")
    so.add_argument("--version", help="the soup's version (default: a timestamp)")
    so.set_defaults(func=cmd_soup)

    e = subparsers.add_parser("eval", help="paper table + FPR, best-threshold F1, PR curve")
    e.add_argument("--data", required=True, help="DatasetDict folder or CSV/JSONL file")
    e.add_argument("--split", default="test")
    e.add_argument("--adapter", help="adapter/model folder (setting adapter)")
    e.add_argument("--out", default="./runs/eval")
    e.add_argument("--limit", type=int, help="first N examples per dataset")
    e.add_argument("--batch-size", type=int)
    e.add_argument(
        "--labels-only",
        action="store_true",
        help="label and category only, no safety responses (fast; response checks skipped)",
    )
    e.set_defaults(func=cmd_eval)

    r = subparsers.add_parser(
        "retrain", help="learn from flagged traffic; promote if no regression"
    )
    r.add_argument("--dataset-dir")
    r.add_argument("--registry-dir")
    r.add_argument("--flagged-table-dir")
    r.add_argument("--review-file")
    r.add_argument("--steps", type=int, help="training step budget (setting train_steps)")
    r.add_argument("--max-minutes", type=float,
                   help="training time budget: stop there and evaluate what was learnt")
    r.add_argument("--since", help="only traffic flagged since: ISO-8601, epoch s, or 24h / 7d")
    r.add_argument("--merge", action="store_true",
                   help="on promotion also write the merged folder (what vLLM workers serve)")
    r.add_argument("--eval-limit", type=int, help="first N held-out examples per source")
    r.set_defaults(func=cmd_retrain)
