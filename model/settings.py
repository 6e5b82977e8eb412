"""The one settings object of guardian: every knob, read from `GUARDIAN_*` variables.

Code, README and deploy/ all use these names (a test checks deploy/ against this class), so
a key means the same thing wherever it appears. Values come from, in order: keyword
arguments, environment variables, a `.env`-style file named by GUARDIAN_ENV_FILE, defaults.
The streaming and training keys live here too because the settings object is one, but only
stream/ and training/ read them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The trained guardian that ships with the package (a LoRA adapter on Gemma 3 270M).
SHIPPED_ADAPTER = Path(__file__).resolve().parent / "adapters" / "guardian-v4"


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 in hardware; without it torch emulates bf16 matmuls.

    Measured on a 2-core Xeon with AVX-512 but no AVX512-BF16: the guardian's label pass ran
    at 4.6 queries/s in bf16 and 15.1 in float32. Unknown (no /proc/cpuinfo) counts as no.
    """
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "guardian"


class GuardianSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GUARDIAN_",
        env_file=os.environ.get("GUARDIAN_ENV_FILE"),
        extra="ignore",
        protected_namespaces=(),
    )

    # --- model -----------------------------------------------------------------------
    #: Folder for prepared base models and other derived files.
    cache_dir: Path = Field(default_factory=default_cache_dir)
    #: A Hugging Face causal-LM folder to use as the base; empty means the prepared Gemma.
    base_model: str = ""
    #: A peft adapter folder (or a full fine-tuned model folder) loaded on top of the base.
    #: "default": the guardian adapter shipped in model/adapters/ when the base is the
    #: prepared Gemma (it was trained on that base), no adapter on any other base;
    #: "none" or empty: the bare base; "current" or "vN": a registry version
    #: (model/registry.py). model/resolve.py turns this into what is loaded.
    adapter: str = "default"
    #: Version string recorded in verdicts; empty reads it from the adapter's metadata.
    #: A registry load ("current", "vN") always records the registry version name.
    model_version: str = ""
    backend: Literal["transformers", "vllm"] = "transformers"
    #: "auto" picks CUDA when present, else CPU.
    device: str = "auto"
    #: "auto" is bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16 or AMX: ~3x fp32
    #: there), float32 on other CPUs (where bf16 is emulated: ~3x slower than fp32).
    dtype: str = "auto"
    #: Queries per forward pass.
    batch_size: int = 16
    max_query_tokens: int = 256
    max_new_tokens: int = 96
    #: Torch CPU threads; 0 leaves torch's default.
    num_threads: int = 0
    #: vLLM: fraction of GPU memory it may take, and the LoRA rank it reserves for.
    vllm_gpu_memory_utilization: float = 0.85
    vllm_max_lora_rank: int = 64

    # --- policies --------------------------------------------------------------------
    #: Extra folder of policy TOML files (overrides built-ins with the same id).
    policy_dir: str = ""
    #: Policy of a record that names none: a policy id, or "auto" for the default policy
    #: of the query's detected language (default_policies).
    default_policy: str = "auto"
    default_policies: dict[str, str] = {"ko": "default-ko", "en": "default-en"}

    # --- streaming (stream/) ---------------------------------------------------------
    kafka_bootstrap: str = "localhost:9092"
    redis_url: str = ""
    app_id: str = "guardian"
    topic_queries: str = "guardian.queries"
    topic_verdicts: str = "guardian.verdicts"
    topic_responses: str = "guardian.responses"
    topic_flagged: str = "guardian.flagged"
    topic_dlq: str = "guardian.dlq"
    #: Partitions / replication of the guardian topics when the worker has to create them
    #: (existing topics are left as they are). Partitions cap the useful number of workers.
    topic_partitions: int = 12
    topic_replication: int = 1
    max_batch: int = 16
    max_wait_ms: int = 200
    #: A longer query text is judged on its first `max_text_chars` characters (its verdict
    #: says so: `query_truncated`, `text_chars`).
    max_text_chars: int = 4000
    #: A backend call that raises on a batch is tried again this many times, after
    #: `retry_backoff_s`, then twice that, ...; then each query of the batch is judged
    #: alone and only those that still fail go to the DLQ (reason "model error").
    batch_retries: int = 2
    retry_backoff_s: float = 0.2
    cache_ttl_s: int = 86400
    flagged_table_dir: str = "./data/flagged"
    metrics_port: int = 9464
    #: Workers follow the registry: between batches, every `registry_poll_s` seconds, a
    #: worker reads the registry pointer (the `current` file under registry_dir and, with
    #: redis_url, the Redis key `registry:current`); when it names another version the
    #: worker loads that version beside the serving one and switches between batches.
    #: Start such workers with GUARDIAN_ADAPTER=current.
    follow_registry: bool = False
    registry_poll_s: float = 5.0

    # --- HTTP API (api/) -------------------------------------------------------------
    #: Where `guardian serve` listens (0.0.0.0 to accept outside connections).
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    #: JSON or TOML file of API keys -> tenant and allowed policies; empty = open API.
    api_keys_file: str = ""
    #: Dynamic batching across requests: queries per model call, and the collection
    #: window from the oldest waiting query.
    api_max_batch: int = 32
    api_max_wait_ms: int = 10
    #: Queries waiting for the model beyond which a request is refused with 429.
    api_max_queue: int = 512
    #: Request body size (413 above) and inputs per request (413 above).
    api_max_body_bytes: int = 1_000_000
    api_max_inputs: int = 128

    # --- training (training/) --------------------------------------------------------
    data_dir: str = "../shared/data"
    dataset_dir: str = "./data/guardian-dataset"
    registry_dir: str = "./models"
    teacher_url: str = ""
    teacher_model: str = ""
    teacher_api_key: str = ""
    #: Teacher requests per second (synth, relabelling) and retries per request.
    teacher_rate_limit: float = 2.0
    teacher_max_retries: int = 4
    #: Share of each source kept as its fixed held-out test split (hash of the text).
    test_fraction: float = 0.1
    #: Safe examples per unsafe example in a training mix (paper, Figure 4).
    safe_unsafe_ratio: float = 1.0
    #: Share of safe training queries also taught with `<|harm|>` (-> unsafe + response).
    harm_token_fraction: float = 0.05
    #: Share of training draws whose language is chosen uniformly (0: as in the data).
    train_language_balance: float = 0.0
    train_steps: int = 200
    train_batch_size: int = 8
    learning_rate: float = 2e-4
    lora_r: int = 16
    train_max_tokens: int = 192
    #: Retraining: base examples per flagged example, reviewer label file, allowed F1 drop.
    retrain_base_ratio: float = 4.0
    review_file: str = ""
    max_regression: float = 0.0

    def resolved_adapter(self) -> Path | None:
        if self.adapter in ("", "none"):
            return None
        if self.adapter == "default":
            shipped = SHIPPED_ADAPTER
            usable = not self.base_model and (shipped / "adapter_config.json").is_file()
            return shipped if usable else None
        return Path(self.adapter)

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_dtype(self):
        import torch

        if self.dtype == "auto":
            native = self.resolved_device().startswith("cuda") or cpu_has_native_bf16()
            return torch.bfloat16 if native else torch.float32
        try:
            dtype = getattr(torch, self.dtype)
        except AttributeError:
            raise ValueError(f"GUARDIAN_DTYPE={self.dtype!r} is not a torch dtype") from None
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"GUARDIAN_DTYPE={self.dtype!r} is not a torch dtype")
        return dtype

    @property
    def prepared_base_dir(self) -> Path:
        return self.cache_dir / "base" / "gemma-3-270m"


def get_settings(**overrides) -> GuardianSettings:
    return GuardianSettings(**overrides)
