"""`guardian train`: two-stage fine-tuning on the guardian format, loss on answer tokens only.

Stage 1 (SFT, classification warm-up): prompt -> `<|safe|>` or `<|unsafe|> <|category|>`,
short targets, so many queries per second. Stage 2 (safety multi-task, the paper's step 2):
prompt -> label + category + safety response, plus `<|harm|>` examples: a safe query with
the harm token appended must answer unsafe with a response (forced path, DESIGN.md). The
forced examples use the `sensitive_topic` category (the tenant deemed the topic sensitive)
and its seed response in the query's language.

Batches mix safe and unsafe examples at `safe_unsafe_ratio` safe per unsafe (sampling with
replacement, seeded). LoRA (peft) on attention and MLP projections with the guardian
token rows trainable through `trainable_token_indices` (no embedding resize, adapter of a
few MB), or `--full` fine-tuning. A plain torch loop: AdamW, linear warmup and decay,
bf16 weights on CUDA, the settings' dtype on CPU.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from model.loading import MODEL_META_FILE, assign_special_tokens, save_token_map
from model.prompt import build_answer_ids, build_prompt_ids
from model.resolve import resolve_model
from model.settings import GuardianSettings

FORCED_CATEGORY = "sensitive_topic"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TRAIN_META_FILE = "training_config.json"


@dataclass
class TrainConfig:
    out_dir: str
    stage1_steps: int = 100
    stage2_steps: int = 100
    batch_size: int = 8
    learning_rate: float = 2e-4
    lora_r: int = 16
    full: bool = False
    safe_unsafe_ratio: float = 1.0
    harm_fraction: float = 0.05
    language_balance: float = 0.0
    max_tokens: int = 192
    seed: int = 0
    version: str = ""
    model_id: str = "guardian"
    init_from: str = ""  # an adapter / model folder to continue from (retraining)
    data_note: str = ""
    extra: dict = field(default_factory=dict)
    # "cached" (train_cached.py: top layers over cached lower-layer states, epochs) or
    # "legacy" (every layer, sampled steps; also what --full uses)
    recipe: str = "legacy"
    train_layers: int = 6
    stage1_epochs: float = 2.0
    stage2_epochs: float = 2.0
    checkpoint_minutes: float = 5.0
    resume: bool = False
    cache_dir: str = ""
    source_caps: dict | None = None
    # a time budget (seconds, 0 = none): training stops there and saves what it has, with
    # `stopped_by_budget` in its info (the retrain job's nightly window)
    max_seconds: float = 0.0

    @classmethod
    def from_settings(cls, settings: GuardianSettings, out_dir: str, **kw) -> TrainConfig:
        steps = settings.train_steps
        base = dict(
            out_dir=out_dir,
            stage1_steps=steps // 2,
            stage2_steps=steps - steps // 2,
            batch_size=settings.train_batch_size,
            learning_rate=settings.learning_rate,
            lora_r=settings.lora_r,
            safe_unsafe_ratio=settings.safe_unsafe_ratio,
            harm_fraction=settings.harm_token_fraction,
            language_balance=settings.train_language_balance,
            max_tokens=settings.train_max_tokens,
        )
        base.update({k: v for k, v in kw.items() if v is not None})
        return cls(**base)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


class Mixer:
    """Samples training examples at the configured safe:unsafe ratio."""

    def __init__(
        self,
        rows: list[dict],
        ratio: float,
        harm_fraction: float,
        responses,
        seed: int,
        language_balance: float = 0.0,
    ):
        self.safe = [r for r in rows if r["label"] == "safe"]
        self.unsafe = [r for r in rows if r["label"] == "unsafe"]
        if not self.safe and not self.unsafe:
            raise ValueError("no training examples")
        # language_balance: share of draws whose language is picked uniformly, so a language
        # with 5% of the rows (English here) is not drowned out by the other.
        self.language_balance = language_balance
        self.by_language: dict[tuple[str, str], list[dict]] = {}
        for r in rows:
            self.by_language.setdefault((r["label"], r.get("language") or "en"), []).append(r)
        self.languages = sorted({lang for _, lang in self.by_language})
        self.p_unsafe = (
            1.0 / (1.0 + ratio) if self.safe and self.unsafe else float(bool(self.unsafe))
        )
        self.harm_fraction = harm_fraction
        self.responses = responses
        self.rng = random.Random(seed)

    def _pick(self, label: str) -> dict:
        pool = self.unsafe if label == "unsafe" else self.safe
        if self.language_balance and self.rng.random() < self.language_balance:
            lang = self.rng.choice(self.languages)
            pool = self.by_language.get((label, lang)) or pool
        return dict(self.rng.choice(pool))

    def sample(self, with_response: bool) -> dict:
        if self.rng.random() < self.p_unsafe:
            r = self._pick("unsafe")
            r["force_harm"] = False
        else:
            r = self._pick("safe")
            r["force_harm"] = False
            if with_response and self.harm_fraction and self.rng.random() < self.harm_fraction:
                r.update(
                    force_harm=True,
                    label="unsafe",
                    category=FORCED_CATEGORY,
                    response=self.responses.pick(FORCED_CATEGORY, r["language"], r["text"])
                    if self.responses
                    else None,
                )
        if not with_response:
            r["response"] = None
        return r


def encode_example(tokenizer, tokens, ex: dict, max_tokens: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) with labels -100 on the prompt: loss on answer tokens only."""
    answer = build_answer_ids(
        tokenizer,
        tokens,
        label=ex["label"],
        category=ex.get("category"),
        response=ex.get("response"),
        max_response_tokens=max(8, max_tokens // 2),
    )
    room = max(8, max_tokens - len(answer) - 6)
    prompt = build_prompt_ids(
        tokenizer,
        tokens,
        ex["text"],
        language=ex.get("language") or "en",
        force_harm=bool(ex.get("force_harm")),
        max_query_tokens=room,
    ).ids
    return prompt + answer, [-100] * len(prompt) + answer


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int):
    import torch

    n = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, (x, y) in enumerate(batch):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return ids, mask, labels


def answer_loss(model, ids, mask, labels):
    """Cross-entropy on the answer tokens, projecting only their positions onto the vocabulary.

    Same loss as `model(labels=...)`, but the 262k-row output head runs on the few answer
    positions instead of every position: on Gemma 3 270M that projection costs more than the
    decoder body, so this roughly halves a label-only step.
    """
    import torch
    import torch.nn.functional as F

    hidden = model.get_decoder()(
        input_ids=ids, attention_mask=mask, use_cache=False
    ).last_hidden_state
    target = labels[:, 1:]
    keep = target != -100
    logits = model.get_output_embeddings()(hidden[:, :-1][keep]).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(logits, target[keep])


def training_autocast(device: str, settings: GuardianSettings):
    """bf16 autocast on CPU when the settings resolve to bf16 (asked for, or `auto` on a CPU
    with native bf16): fp32 master weights. Emulated bf16 is slower than fp32."""
    import contextlib

    import torch

    if device == "cpu" and settings.resolved_dtype() == torch.bfloat16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(model, learning_rate: float, total_steps: int):
    """AdamW over the trainable parameters, linear warm-up (5%) then linear decay to 5%."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    warm = max(1, total_steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.05, 1 - s / max(total_steps, 1))
    )
    return params, opt, sched


def optimizer_step(loss, params, opt, sched) -> None:
    import torch

    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)


def attach_lora(model, cfg: TrainConfig, init: Path | None, **layout):
    """The adapter both recipes train: the one in `init` continued, or a fresh LoRA of
    rank `cfg.lora_r` on every projection with the recipe's `layout` (which token rows or
    layers it covers)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if init is not None:
        tuned = PeftModel.from_pretrained(model, str(init), is_trainable=True)
        # A saved adapter names its base by the bare name (no machine path, see
        # _drop_local_base_path). Point it back at the local base folder, or
        # save_pretrained looks that name up on the Hub to check the vocabulary.
        local = getattr(model.config, "_name_or_path", None)
        if local and Path(local, "config.json").is_file():
            for conf in tuned.peft_config.values():
                conf.base_model_name_or_path = local
        return tuned
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, lora_dropout=0.0,
                      target_modules=LORA_TARGETS, task_type="CAUSAL_LM", **layout)
    return get_peft_model(model, lcfg)


def load_for_training(settings: GuardianSettings, cfg: TrainConfig):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = settings.resolved_device()
    if device.startswith("cuda"):
        dtype = torch.bfloat16
    else:
        # fp32 weights on CPU; GUARDIAN_DTYPE=bfloat16 adds bf16 autocast (training_autocast)
        dtype = torch.float32
    # the same resolver as serving: the base, the folder continued from, its token map
    resolved = resolve_model(settings, cfg.init_from or "none")
    base = resolved.base_dir
    init = resolved.adapter_dir if resolved.kind == "adapter" else None
    tokenizer = AutoTokenizer.from_pretrained(str(resolved.tokenizer_dir))
    model = AutoModelForCausalLM.from_pretrained(str(resolved.weights_dir), dtype=dtype)
    tokens = resolved.token_map or assign_special_tokens(tokenizer, model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not cfg.full:
        model = attach_lora(model, cfg, init, trainable_token_indices=sorted(tokens.all_ids))
    model.to(device)
    model.train()
    return model, tokenizer, tokens, base, device


def train(
    settings: GuardianSettings,
    cfg: TrainConfig,
    rows: list[dict],
    *,
    responses=None,
    progress: bool = True,
    eval_fn=None,
) -> dict:
    """Run both stages and save the folder; returns {"out_dir", "losses", ...}."""
    if cfg.recipe == "cached":
        if cfg.full:
            raise ValueError("the cached recipe trains LoRA on the top layers: "
                             "use recipe 'legacy' with --full")
        from training.train_cached import train_cached

        return train_cached(
            settings, cfg, rows, responses=responses, progress=progress, eval_fn=eval_fn
        )
    import torch
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    model, tokenizer, tokens, base, device = load_for_training(settings, cfg)
    total = cfg.stage1_steps + cfg.stage2_steps
    params, opt, sched = make_optimizer(model, cfg.learning_rate, total)
    mixer = Mixer(
        rows, cfg.safe_unsafe_ratio, cfg.harm_fraction, responses, cfg.seed,
        language_balance=cfg.language_balance,
    )
    pad = tokenizer.pad_token_id
    autocast = training_autocast(device, settings)
    losses: list[float] = []
    stages = [("sft", cfg.stage1_steps, False), ("multitask", cfg.stage2_steps, True)]
    t0 = time.time()
    bar = tqdm(total=total, disable=not progress, desc="train")
    steps_run, stopped = 0, False
    for stage, steps, with_resp in stages:
        for _ in range(steps):
            if cfg.max_seconds and time.time() - t0 > cfg.max_seconds:
                stopped = True
                break
            batch = [
                encode_example(tokenizer, tokens, mixer.sample(with_resp), cfg.max_tokens)
                for _ in range(cfg.batch_size)
            ]
            ids, mask, labels = (t.to(device) for t in collate(batch, pad))
            with autocast:
                loss = answer_loss(model, ids, mask, labels)
            optimizer_step(loss, params, opt, sched)
            losses.append(float(loss.detach()))
            bar.set_postfix(stage=stage, loss=f"{losses[-1]:.3f}")
            bar.update(1)
            steps_run += 1
        if stopped:
            break
    bar.close()
    model.eval()
    info = {
        "losses": losses,
        "steps_run": steps_run,
        "stopped_by_budget": stopped,
        "train_seconds": time.time() - t0,
        "device": device,
        "trainable_params": sum(p.numel() for p in params),
        "base": base.name,
    }
    save(model, tokenizer, tokens, settings, cfg, info, eval_fn=eval_fn)
    info["out_dir"] = cfg.out_dir
    return info


def model_card(cfg: TrainConfig, info: dict, eval_md: str | None) -> str:
    losses = info.get("losses") or [0.0]
    k = max(1, min(10, len(losses) // 4 or 1))
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    cfg_json = json.dumps(
        {k2: v for k2, v in asdict(cfg).items() if k2 not in ("out_dir", "init_from")},
        indent=2,
        ensure_ascii=False,
    )
    if cfg.full:
        method = "full fine-tune"
    elif cfg.recipe == "cached":
        method = (f"LoRA r={cfg.lora_r} on the top {cfg.train_layers} layers (cached recipe; "
                  "guardian token rows as in the base)")
    else:
        method = f"LoRA r={cfg.lora_r} + guardian token rows"
    lines = [
        f"# {cfg.model_id} {cfg.version}",
        "",
        "A guardian model (SLM as Guardian format): the query is labelled `<|safe|>` or",
        "`<|unsafe|> <|category|>` followed by a safety response. Load it with",
        "`GUARDIAN_ADAPTER=<this folder>` (and the base in `GUARDIAN_BASE_MODEL` or the",
        "prepared Gemma).",
        "",
        f"- base model: {info.get('base')}",
        f"- method: {method}",
        f"- continued from: {Path(cfg.init_from).name if cfg.init_from else '(base)'}",
        f"- code: git {git_commit()}",
        f"- device: {info.get('device')}, {info.get('train_seconds', 0):.0f} s, "
        f"{info.get('trainable_params', 0):,} trainable parameters",
        f"- loss (mean of first/last {k} steps): {first:.3f} -> {last:.3f}",
        "",
        "## Data",
        "",
        cfg.data_note
        or "Guardian dataset built by `guardian data build` (train split only; the held-out "
        "test split is never trained on). Public sources keep their licences; see the "
        "dataset's STATS.md for the label mapping. Seed data: data/seeds/ (written in the "
        "teacher's role, not third-party reviewed).",
        "",
        "## Settings",
        "",
        "```json",
        cfg_json,
        "```",
        "",
        "## Evaluation",
        "",
        eval_md or "Not run at training time (run `guardian eval`).",
        "",
        "Gemma-based weights are subject to the Gemma Terms of Use; ship them with a NOTICE.",
        "",
    ]
    return "\n".join(lines)


def _drop_local_base_path(folder: Path, base_name: str) -> None:
    """peft records the base's folder on this machine; a shipped adapter must not.

    The guardian loaders never read it (the base comes from settings), so the base's name
    is kept instead as a hint for people.
    """
    path = folder / "adapter_config.json"
    if path.exists():
        config = json.loads(path.read_text())
        config["base_model_name_or_path"] = base_name
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def save(model, tokenizer, tokens, settings, cfg: TrainConfig, info: dict, eval_fn=None) -> Path:
    out = Path(cfg.out_dir)
    staged = out.with_name(out.name + ".partial")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    model.save_pretrained(str(staged))
    if cfg.full:
        tokenizer.save_pretrained(str(staged))
    _drop_local_base_path(staged, info.get("base") or "")
    save_token_map(tokens, staged)
    version = cfg.version or time.strftime("v%Y%m%d-%H%M%S")
    cfg.version = version
    meta = {
        "model_id": cfg.model_id,
        "version": version,
        "base": info.get("base"),
        "method": "full" if cfg.full else "lora",
        "git_commit": git_commit(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (staged / MODEL_META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    (staged / TRAIN_META_FILE).write_text(
        json.dumps({"config": asdict(cfg), "losses": info.get("losses")}, indent=2) + "\n"
    )
    eval_md = None
    if eval_fn is not None:
        eval_md = eval_fn(staged)
    (staged / "README.md").write_text(model_card(cfg, info, eval_md))
    if out.exists():
        shutil.rmtree(out)
    os.replace(staged, out)
    return out
