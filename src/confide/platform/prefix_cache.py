"""The frozen prefix of a BERT-family or Llama-family model, run once per record instead of once per step.

With LoRA on the top layers only (`adapter.layers`), the embeddings and every layer below the lowest
adapted one are frozen. Their output for a record depends on nothing but the record's tokens, so
recomputing it at every DP step (and at every evaluation) is wasted work: on MiniLM-L6 with
adapters on layers 4-5 it is two thirds of the forward pass, on SmolLM2-135M with adapters on the top
layers of 30 most of what remains besides the 49,152-token output head.

`install_prefix_cache` makes that prefix run in inference mode (no dropout: a frozen layer's dropout
only adds noise that no weight can adapt to, and it would make the output depend on the draw) and
memoises its output per record, keyed by the record's token ids (and token types, where a second
segment makes them other than 0; a batch with positions of its own runs uncached). The key is the
content, not a position in some dataset, so a refreshed dataset, a test set and a training set that
share a record all stay correct. In a decoder a position's state depends on the positions before it
only, so a right-padded record's states are the same whatever the batch's width. The memo is
bounded in bytes (least recently used first out) and lives in this process only; it holds
activations of local records and never leaves the member.

Gradients are unaffected: nothing below the lowest adapted layer has a trainable weight, so
backpropagation stopped there already; Opacus' per-record gradients are those of the same loss.

The module names (and so the state dict, peft's adapter files and every digest) do not change: the
prefix layers keep their place, and only their instances' `forward` is replaced.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

DEFAULT_MAX_BYTES = 512 * 2**20
"""Memory for memoised activations per model (MiniLM, 32 tokens: about 49 KB a record)."""


@dataclass(frozen=True)
class PrefixLayout:
    """Where a model family keeps what the memo needs, and how its layers are called."""

    batch_args: tuple[str, ...]
    """The model's forward arguments that decide the prefix's output, in positional order."""
    row_kwargs: tuple[str, ...] | None
    """Layer arguments that hold one row per record (None: any tensor whose first dimension is the batch)."""
    decoder: bool
    """Llama family: `embed_tokens` and `layers` on the model; else BERT's `embeddings` and `encoder.layer`."""


BERT_LAYOUT = PrefixLayout(("input_ids", "attention_mask", "token_type_ids", "position_ids"), None, False)
# Llama's layers also take the positions' cos/sin (one row for the whole batch) and the cache
# position (a vector as long as the sequence, which may equal the batch size): not per record.
LLAMA_LAYOUT = PrefixLayout(("input_ids", "attention_mask", "position_ids"), ("attention_mask",), True)


class FrozenPrefixCache:
    """Serves the output of the first `first_adapted` layers for each record of a batch from a memo."""

    def __init__(self, encoder_model: nn.Module, first_adapted: int, max_bytes: int = DEFAULT_MAX_BYTES,
                 layout: PrefixLayout = BERT_LAYOUT) -> None:
        self.layout = layout
        self.embeddings = encoder_model.embed_tokens if layout.decoder else encoder_model.embeddings
        stack = encoder_model.layers if layout.decoder else encoder_model.encoder.layer
        self.layers = list(stack[:first_adapted])
        self.originals = [layer.forward for layer in self.layers]
        self.max_bytes = max_bytes
        self.entries: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._batch = _Batch()
        self._served = False

    def install(self, encoder_model: nn.Module) -> None:
        # Bound methods and partials only, no closures: `copy.deepcopy` of the model then gives a
        # copy whose hooks and layers use the copy's own memo and layers.
        encoder_model.register_forward_pre_hook(self._take_batch, with_kwargs=True)
        encoder_model.register_forward_hook(self._drop_batch, with_kwargs=True)
        if not self.layout.decoder:
            encoder_model.encoder.register_forward_pre_hook(self._new_call, with_kwargs=True)
        self.layers[0].forward = self._first
        for index in range(1, len(self.layers)):
            self.layers[index].forward = functools.partial(self._passed_on, index)

    def _take_batch(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        # BertModel.forward(input_ids, attention_mask, token_type_ids, position_ids, ...);
        # LlamaModel.forward(input_ids, attention_mask, position_ids, ...)
        names = self.layout.batch_args
        given = {name: kwargs.get(name, args[i] if len(args) > i else None) for i, name in enumerate(names)}
        self._batch = _Batch(**given)
        self._served = False

    def _drop_batch(self, _module: nn.Module, _args: tuple, _kwargs: dict, _output: object) -> None:
        self._batch = _Batch()

    def _new_call(self, _module: nn.Module, _args: tuple, _kwargs: dict) -> None:
        self._served = False

    def _passed_on(self, index: int, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        # The first prefix layer already returned the whole prefix's output for this call.
        return hidden_states if self._served else self.originals[index](hidden_states, *args, **kwargs)

    def _first(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        ids = self._batch.input_ids
        lengths = None if self._batch.position_ids is not None else _right_padded_lengths(
            ids, self._batch.attention_mask, hidden_states)
        if lengths is None:
            # Holes in the mask (left padding), positions of the caller's own or no token ids
            # (inputs_embeds): nothing to key on, so the prefix runs uncached, from the token ids
            # when there are some (no embedding dropout).
            self._served = True
            return self._run(ids, hidden_states, args, kwargs, list(range(hidden_states.shape[0])))
        keys = self._batch.keys(lengths)
        missing = [row for row, key in enumerate(keys) if key not in self.entries]
        if missing:
            computed = self._run(ids, hidden_states, args, kwargs, missing)
            for position, row in enumerate(missing):
                self._store(keys[row], computed[position, : lengths[row]].clone())
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        out = hidden_states.new_zeros(hidden_states.shape)
        for row, key in enumerate(keys):
            entry = self.entries[key] if key in self.entries else None
            if entry is None:  # evicted by this very batch (a memo smaller than one batch)
                entry = self._run(ids, hidden_states, args, kwargs, [row])[0, : lengths[row]]
            else:
                self.entries.move_to_end(key)
            out[row, : lengths[row]] = entry.to(out.device, out.dtype)
        self._served = True
        return out

    def _run(self, ids: torch.Tensor | None, hidden_states: torch.Tensor, args: tuple, kwargs: dict,
             rows: list[int]) -> torch.Tensor:
        """The prefix's output for `rows` of the batch, in inference mode, without a graph."""
        batch = hidden_states.shape[0]
        index = torch.tensor(rows, device=hidden_states.device)
        per_row = self.layout.row_kwargs
        args = tuple(_rows(a, index, batch) for a in args) if per_row is None else args
        kwargs = {k: _rows(v, index, batch) if per_row is None or k in per_row else v for k, v in kwargs.items()}
        modules = [self.embeddings, *self.layers]
        modes = [m.training for m in modules]
        try:
            for module in modules:
                module.train(False)
            with torch.no_grad():
                # Recomputed so that the embeddings' dropout (train mode) does not reach the prefix.
                if ids is None:
                    h = hidden_states[index]
                elif self.layout.decoder:
                    h = self.embeddings(ids[index])
                else:
                    h = self.embeddings(input_ids=ids[index],
                                        token_type_ids=_rows(self._batch.token_type_ids, index, batch),
                                        position_ids=_rows(self._batch.position_ids, index, batch))
                for original in self.originals:
                    h = original(h, *args, **kwargs)
        finally:
            for module, mode in zip(modules, modes):
                module.train(mode)
        return h

    def _store(self, key: bytes, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.max_bytes:
            return
        self.entries[key] = value
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self.entries.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()


@dataclass(frozen=True)
class _Batch:
    """What the encoder was called with: the tokens that decide the prefix's output for each record."""

    input_ids: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    token_type_ids: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None

    def keys(self, lengths: list[int]) -> list[bytes]:
        """Each record's memo key: its token ids, and its token types unless they are all 0 (BERT's default)."""
        assert self.input_ids is not None
        ids = self.input_ids.cpu().numpy()  # one transfer per batch, not one per record
        types = self.token_type_ids
        types = None if types is None or not bool(types.any()) else types.cpu().numpy()
        if types is None:
            return [ids[row, :length].tobytes() for row, length in enumerate(lengths)]
        return [ids[row, :length].tobytes() + b"|" + types[row, :length].tobytes()
                for row, length in enumerate(lengths)]


def _rows(value: Any, index: torch.Tensor, batch: int) -> Any:
    """`value` restricted to the batch rows in `index` when it is a per-row tensor (masks); else as is."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch and batch > 1:
        return value[index.to(value.device)]
    return value


def _right_padded_lengths(ids: torch.Tensor | None, mask: torch.Tensor | None,
                          hidden_states: torch.Tensor) -> list[int] | None:
    """Each row's token count when the batch is right-padded token ids; None when it cannot be keyed."""
    if ids is None or ids.dim() != 2 or ids.shape[:2] != hidden_states.shape[:2]:
        return None
    batch, width = ids.shape
    if mask is None:
        return [width] * batch
    if mask.shape != ids.shape:
        return None
    mask = mask.to(torch.bool).cpu()
    lengths = mask.sum(dim=1)
    if not torch.equal(mask, torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)):
        return None
    return [int(n) for n in lengths]


def install_prefix_cache(base: nn.Module, adapted_layers: list[int] | None,
                         max_bytes: int = DEFAULT_MAX_BYTES) -> FrozenPrefixCache | None:
    """Memoise the frozen prefix of `base` (a BERT-family or Llama-family model) below its lowest adapted layer.

    Returns the cache, or None where there is nothing to memoise: adapters on every layer (or on
    layer 0), or a model that is neither an encoder with `embeddings` and `encoder.layer` nor a
    decoder with `embed_tokens` and `layers` (GPT-2, say).
    """
    encoder_model = getattr(base, "base_model", None)
    if hasattr(encoder_model, "embed_tokens") and isinstance(getattr(encoder_model, "layers", None), nn.ModuleList):
        layout, layers = LLAMA_LAYOUT, encoder_model.layers
    elif hasattr(encoder_model, "embeddings") and isinstance(
            getattr(getattr(encoder_model, "encoder", None), "layer", None), nn.ModuleList):
        layout, layers = BERT_LAYOUT, encoder_model.encoder.layer
    else:
        return None
    if adapted_layers is None or not adapted_layers:
        return None
    first = min(adapted_layers)
    if first < 1 or first > len(layers) or not _layers_return_tensors(layers[0], encoder_model, layout):
        return None
    cache = FrozenPrefixCache(encoder_model, first, max_bytes, layout)
    cache.install(encoder_model)
    return cache


def _layers_return_tensors(layer: nn.Module, encoder_model: nn.Module, layout: PrefixLayout) -> bool:
    """Whether a layer returns its hidden states as a bare tensor (transformers 5), not a tuple (4.x)."""
    width = encoder_model.config.hidden_size
    parameter = next(layer.parameters())
    mode = layer.training
    try:
        layer.train(False)
        with torch.no_grad():
            h = torch.zeros(1, 1, width, dtype=parameter.dtype, device=parameter.device)
            if layout.decoder:  # a decoder layer needs its positions' rotary cos/sin
                positions = torch.zeros(1, 1, dtype=torch.long, device=parameter.device)
                out = layer(h, position_embeddings=encoder_model.rotary_emb(h, position_ids=positions))
            else:
                out = layer(h)
    finally:
        layer.train(mode)
    return isinstance(out, torch.Tensor)
