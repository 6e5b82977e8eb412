"""The cached CPU recipe: LoRA on the top layers over lower-layer states computed once.

Why it is cheaper per epoch than the legacy recipe (`benchmarks/train_step_time.py` prints
both in one run): the frozen lower layers run once per sequence for the whole training run
instead of once per step (prefix_cache.py); a step runs only the top layers; the label
and category losses project onto the guardian's 12 answer rows instead of the 262k-row
vocabulary; batches are length-bucketed so a short query does not pay for a long one; and
the epoch is a curated mix with per-source caps (mix.py) instead of every row.

Stage 1 (SFT, the paper's first step): label at the last prompt position and, for unsafe
rows, the category at the position of `<|unsafe|>`. Stage 2 (safety multi-task): the same
plus the safety response tokens, for rows whose response was written for that very query,
and `<|harm|>` copies of safe rows (the forced path). The guardian token rows stay those of
the base: the adapter is plain LoRA, which vLLM's LoRA loader can serve as it is.

Resumable: a checkpoint (LoRA weights, optimiser, scheduler, step, losses) is written every
`checkpoint_minutes` and at the end of each stage; the data order is a pure function of the
seed, the stage and the epoch, so `--resume` continues with exactly the batches a run that
was never stopped would have seen.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

from model.loading import assign_special_tokens
from model.prompt import build_answer_ids, build_prompt_ids
from model.resolve import resolve_model
from model.settings import GuardianSettings
from model.taxonomy import CATEGORY_IDS
from training.mix import curated_mix
from training.prefix_cache import TopLayers, build_prefix_cache
from training.train import (
    FORCED_CATEGORY,
    attach_lora,
    make_optimizer,
    optimizer_step,
    training_autocast,
)
from training.train import save as save_folder

CHECKPOINT_FILE = "checkpoint.pt"
RESPONSE_TOKENS = 80


def encode_rows(tokenizer, tokens, rows: list[dict], cfg, responses) -> list[dict]:
    """Token sequences of the epoch's examples (and `<|harm|>` copies of some safe rows)."""
    rng = random.Random(cfg.seed)
    out = []

    def add(text, language, label, category, response, force_harm):
        prompt = build_prompt_ids(
            tokenizer, tokens, text, language=language, force_harm=force_harm,
            max_query_tokens=cfg.max_tokens,
        ).ids
        has_resp = label == "unsafe" and bool(response)
        if has_resp:  # label, category, response, eos: the answer format of model/prompt.py
            ids = prompt + build_answer_ids(
                tokenizer, tokens, label=label, category=category, response=response,
                max_response_tokens=RESPONSE_TOKENS,
            )
        else:  # only the label and category positions are trained: no tokens after them
            ids = prompt + ([tokens.unsafe] if label == "unsafe" else [])
        out.append(
            {
                "ids": ids,
                "prompt_len": len(prompt),
                "label": int(label == "unsafe"),
                "cat": CATEGORY_IDS.index(category) if label == "unsafe" else -1,
                "resp": has_resp,
            }
        )

    for r in rows:
        lang = r.get("language") or "en"
        paired = r.get("response") if r.get("response_source") == "paired" else None
        add(r["text"], lang, r["label"], r.get("category"), paired, False)
        if r["label"] == "safe" and cfg.harm_fraction and rng.random() < cfg.harm_fraction:
            resp = responses.pick(FORCED_CATEGORY, lang, r["text"]) if responses else None
            add(r["text"], lang, "unsafe", FORCED_CATEGORY, resp, True)
    return out


def bucketed_batches(indices: list[int], lengths: list[int], batch_size: int, seed: int):
    """Shuffle, sort within windows of 32 batches by length, cut, shuffle the batches."""
    rng = random.Random(seed)
    idx = list(indices)
    rng.shuffle(idx)
    window = batch_size * 32
    batches = []
    for w in range(0, len(idx), window):
        part = sorted(idx[w : w + window], key=lambda i: lengths[i])
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def _matching_adapter(adapter_dir: Path, cfg, split: int, n_layers: int) -> None:
    """A continued adapter must have the LoRA layout this recipe trains: the same rank and
    exactly the top layers, no trained token rows (the cached states below `split` would
    otherwise be stale)."""
    import json

    conf = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    layers = conf.get("layers_to_transform")
    want = list(range(split, n_layers))
    problems = []
    if conf.get("r") != cfg.lora_r:
        problems.append(f"rank {conf.get('r')} (this run: {cfg.lora_r})")
    if layers is None or sorted(layers) != want:
        problems.append(f"layers {layers or 'all'} (this run: {split}-{n_layers - 1})")
    if conf.get("trainable_token_indices"):
        problems.append("trained token rows")
    if problems:
        raise ValueError(
            f"--init-from {adapter_dir.name}: the cached recipe continues only an adapter of "
            f"its own layout; this one has {', '.join(problems)}. Use --recipe legacy."
        )


def load_cached_model(settings: GuardianSettings, cfg):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = settings.resolved_device()
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    # the same resolver as serving and the legacy recipe: the base, the adapter continued from
    resolved = resolve_model(settings, cfg.init_from or "none")
    if resolved.kind == "merged":
        raise ValueError("the cached recipe continues an adapter, not a merged model folder")
    base = resolved.base_dir
    tokenizer = AutoTokenizer.from_pretrained(str(resolved.tokenizer_dir))
    model = AutoModelForCausalLM.from_pretrained(str(resolved.weights_dir), dtype=dtype)
    tokens = resolved.token_map or assign_special_tokens(tokenizer, model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    n_layers = model.config.num_hidden_layers
    split = max(1, n_layers - cfg.train_layers)
    if resolved.adapter_dir is not None:
        _matching_adapter(resolved.adapter_dir, cfg, split, n_layers)
    model = attach_lora(model, cfg, resolved.adapter_dir,
                        layers_to_transform=list(range(split, n_layers)))
    model.to(device)
    return model, tokenizer, tokens, base, device, split


def _checkpoint_path(cfg) -> Path:
    out = Path(cfg.out_dir)
    return out.with_name(out.name + ".ckpt") / CHECKPOINT_FILE


def train_cached(
    settings: GuardianSettings,
    cfg,
    rows: list[dict],
    *,
    responses=None,
    progress: bool = True,
    eval_fn=None,
    save_fn=None,
    max_steps: int | None = None,
) -> dict:
    """Both stages of the cached recipe; saves through training.train.save. `max_steps`
    stops early after that many steps in all (benchmarks), leaving the checkpoint."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    model, tokenizer, tokens, base, device, split = load_cached_model(settings, cfg)
    autocast = training_autocast(device, settings)
    t0 = time.time()
    mix = curated_mix(rows, cfg.source_caps)
    examples = encode_rows(tokenizer, tokens, mix, cfg, responses)
    # one cache entry per distinct sequence (seed rows appear more than once in the mix)
    uniq: dict[tuple, int] = {}
    seqs: list[list[int]] = []
    for ex in examples:
        key = tuple(ex["ids"])
        if key not in uniq:
            uniq[key] = len(seqs)
            seqs.append(ex["ids"])
        ex["cache"] = uniq[key]
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.out_dir).parent / "cache"
    model.eval()
    cache = build_prefix_cache(
        model, seqs, split, pad_id=tokenizer.pad_token_id, device=device,
        cache_dir=cache_dir, base_name=base.name, autocast=autocast, progress=progress,
    )
    cache_seconds = time.time() - t0
    top = TopLayers(model, split)
    model.train()

    stage1 = list(range(len(examples)))
    with_resp = [i for i, e in enumerate(examples) if e["resp"]]
    rest = [i for i, e in enumerate(examples) if not e["resp"]]
    replay = random.Random(cfg.seed + 7).sample(rest, min(len(rest), len(with_resp)))
    stage2 = sorted(with_resp + replay)
    bs = cfg.batch_size
    plan = [
        ("sft", stage1, math.ceil(cfg.stage1_epochs * len(stage1) / bs), False),
        ("multitask", stage2, math.ceil(cfg.stage2_epochs * len(stage2) / bs), True),
    ]
    total = sum(p[2] for p in plan)

    params, opt, sched = make_optimizer(model, cfg.learning_rate, total)
    losses: list[float] = []
    step = 0
    ckpt = _checkpoint_path(cfg)
    if cfg.resume and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        named = dict(model.named_parameters())
        for name, value in state["lora"].items():
            named[name].data.copy_(value)
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step, losses = state["step"], state["losses"]

    def write_checkpoint():
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        lora = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
        tmp = ckpt.with_name(ckpt.name + ".partial")
        torch.save(
            {"lora": lora, "opt": opt.state_dict(), "sched": sched.state_dict(),
             "step": step, "losses": losses},
            tmp,
        )
        tmp.replace(ckpt)

    out_rows = model.get_output_embeddings().weight
    label_rows = [tokens.safe, tokens.unsafe]
    cat_rows = tokens.category_ids
    cap = getattr(model.config, "final_logit_softcapping", None)

    def capped(logits):
        logits = logits.float()
        return torch.tanh(logits / cap) * cap if cap else logits

    lengths = [len(e["ids"]) for e in examples]
    bar = tqdm(total=total, initial=step, disable=not progress, desc="train (cached)")
    last_ckpt = time.time()
    done = 0
    limit = total if max_steps is None else min(total, step + max_steps)
    offset = 0
    budget_hit = False
    for stage, members, steps, multitask in plan:
        if step >= offset + steps:
            offset += steps
            continue
        if not multitask:
            trunc = [e["prompt_len"] + (1 if e["label"] else 0) for e in examples]
        else:
            trunc = lengths
        per_epoch = max(1, math.ceil(len(members) / bs))
        s = step - offset
        batches, batches_epoch = [], None
        while s < steps and step < limit:
            if cfg.max_seconds and time.time() - t0 > cfg.max_seconds:
                budget_hit = True
                break
            epoch, k = divmod(s, per_epoch)
            if epoch != batches_epoch:
                batches = bucketed_batches(
                    members, trunc, bs, cfg.seed * 1000 + epoch + (500 if multitask else 0)
                )
                batches_epoch = epoch
            batch = [examples[i] for i in batches[k]]
            n = [trunc[i] for i in batches[k]]
            width = max(n)
            hidden = model.config.hidden_size
            states = torch.zeros((len(batch), width, hidden), dtype=torch.float32)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, (e, m) in enumerate(zip(batch, n)):
                states[r, :m] = cache.get(e["cache"], m).float()
                mask[r, :m] = 1
            states, mask = states.to(device, out_rows.dtype), mask.to(device)
            with autocast:
                h = top(states, mask)
                rix = torch.arange(len(batch), device=device)
                plen = torch.tensor([e["prompt_len"] for e in batch], device=device)
                y = torch.tensor([e["label"] for e in batch], device=device)
                loss = F.cross_entropy(capped(h[rix, plen - 1] @ out_rows[label_rows].T), y)
                uns = [r for r, e in enumerate(batch) if e["label"]]
                if uns:
                    u = torch.tensor(uns, device=device)
                    yc = torch.tensor([batch[r]["cat"] for r in uns], device=device)
                    loss = loss + F.cross_entropy(
                        capped(h[u, plen[u]] @ out_rows[cat_rows].T), yc
                    )
                if multitask:
                    pos, tgt = [], []
                    for r, e in enumerate(batch):
                        if e["resp"]:
                            p = e["prompt_len"]
                            for t in range(p + 1, len(e["ids"]) - 1):
                                pos.append((r, t))
                                tgt.append(e["ids"][t + 1])
                    if pos:
                        pr = torch.tensor([a for a, _ in pos], device=device)
                        pt = torch.tensor([b for _, b in pos], device=device)
                        logits = capped(model.get_output_embeddings()(h[pr, pt]))
                        loss = loss + F.cross_entropy(logits, torch.tensor(tgt, device=device))
            optimizer_step(loss, params, opt, sched)
            losses.append(float(loss.detach()))
            step += 1
            s += 1
            done += 1
            bar.set_postfix(stage=stage, loss=f"{losses[-1]:.3f}")
            bar.update(1)
            if time.time() - last_ckpt > cfg.checkpoint_minutes * 60:
                write_checkpoint()
                last_ckpt = time.time()
        if step >= limit or budget_hit:
            break
        offset += steps
        write_checkpoint()
        last_ckpt = time.time()
    bar.close()
    train_seconds = time.time() - t0
    info = {
        "losses": losses,
        "train_seconds": train_seconds,
        "cache_seconds": cache_seconds,
        "device": device,
        "trainable_params": sum(p.numel() for p in params),
        "base": base.name,
        "steps_run": done,
        "rows_trained": done * bs,
        "examples": len(examples),
        "distinct_sequences": len(seqs),
        "split_layer": split,
        "stage_steps": {p[0]: p[2] for p in plan},
        "finished": step >= total,
        "stopped_by_budget": budget_hit,
    }
    if step < total and not budget_hit:  # stopped by max_steps: resumable, nothing saved
        write_checkpoint()
        top.restore()
        return info
    top.restore()
    model.eval()
    (save_fn or save_folder)(model, tokenizer, tokens, settings, cfg, info, eval_fn=eval_fn)
    info["out_dir"] = cfg.out_dir
    return info

