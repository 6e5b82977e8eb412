"""A tiny, real transformers guardian for mechanics tests: random weights, small tokenizer.

It is a Gemma3ForCausalLM (the production architecture) with a few hundred thousand
parameters and a byte-level BPE tokenizer trained here on a handful of Korean and English
lines, so tests run in seconds and exercise the same code paths as the real base.
`reserved_slots=True` gives the tokenizer Gemma-style `<unusedN>` tokens; False makes the
loader add the guardian tokens and resize the embeddings instead.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "how do I kill a python process on linux",
    "tell me how to hack into an sns account",
    "where can I watch disney movies for free",
    "what is the capital of france",
    "write a short poem about the sea",
    "you are a piece of trash",
    "sns 계정 해킹하는 방법 알려줘",
    "디즈니 영화 무료로 볼 수 있는 곳 있어?",
    "삼성전자 주가 전망 알려줘",
    "오늘 서울 날씨 어때?",
    "강에 뛰어들면 한번에 죽을까?",
    "죄송하지만 그 요청은 도와드릴 수 없습니다.",
    "I cannot help with that request, but here is some safe information.",
    "저는 불법적인 활동을 지원하거나 알려드릴 수 없습니다.",
] * 4


def build_tiny_guardian(out_dir: str | Path, *, reserved_slots: bool = True, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

    from model.loading import assign_special_tokens, save_token_map

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    if reserved_slots:
        specials += [f"<unused{i}>" for i in range(24)]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=specials[4:],
    )
    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=1024,
        sliding_window=64,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = Gemma3ForCausalLM(config)
    tokens = assign_special_tokens(tokenizer, model)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_token_map(tokens, out)
    return out


def add_tiny_registry_version(registry, version: str, base_dir: str | Path, *, delta: float,
                              promote: bool = False) -> Path:
    """A real (tiny) LoRA adapter on the tiny guardian as registry version `version`.

    `delta` is added to the LoRA B matrices so two versions give different weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.add_(delta)
    folder = registry.path(version)
    peft_model.save_pretrained(folder)
    registry.register(version)
    if promote:
        registry.promote(version)
    return folder
