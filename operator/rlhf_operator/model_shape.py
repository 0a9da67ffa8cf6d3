"""A model's shape, read from its config.json, from the spec, or (last resort) from its size.

Pure: a config.json is passed in as a dict. The memory estimate needs the numbers that decide
bytes: hidden size, layers, attention and key/value heads (and the head width), vocabulary, MLP
width and whether it is gated (SwiGLU: three matrices) or not (two), and tied embeddings. The
architectures below are the decoder-only families whose config fields mean the same; any other
`model_type` (mixture-of-experts models among them, whose expert count changes everything) is
refused with what to set instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

#: model_type -> the MLP is gated (3 matrices: gate, up, down) or not (2: up, down).
GATED = {
    "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo", "olmo2",
    "granite", "cohere", "starcoder2", "smollm3", "ministral",
}  # fmt: skip
PLAIN = {"gpt2", "gpt_neox", "gpt_bigcode", "opt", "gptj", "phi", "bloom", "falcon"}
#: Position embeddings learned per position (a table of max positions x hidden).
LEARNED_POSITIONS = {"gpt2", "gpt_bigcode", "opt"}


class ShapeError(ValueError):
    """A config.json the estimate cannot read: `reason` is a CamelCase word for conditions."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.message, self.reason = message, reason


@dataclass(frozen=True)
class ModelShape:
    params: int
    hidden: int
    layers: int
    vocab: int
    kv_dim: int  # key/value width per layer (kv heads x head dim)
    intermediate: int = 0
    heads: int = 0
    tied: bool = False
    #: Parameters outside the transformer blocks: embeddings, an untied output layer, final norm.
    outside_blocks: int = 0
    #: Where the numbers came from, for messages ("config.json of s3://...", "baseModel.shape", ...).
    origin: str = ""

    @property
    def per_block(self) -> int:
        return (self.params - self.outside_blocks) // max(1, self.layers)

    def scaled_to(self, params: int, origin: str) -> ModelShape:
        """The same layout with another parameter count (a size given without a shape)."""
        return replace(self, params=params, outside_blocks=min(self.outside_blocks, params), origin=origin)

    @staticmethod
    def decoder(  # noqa: PLR0917 - the numbers of a config.json
        hidden: int,
        layers: int,
        vocab: int,
        intermediate: int,
        kv_heads: int,
        heads: int,
        tied: bool = False,
        *,
        gated: bool = True,
        head_dim: int | None = None,
        positions: int = 0,
        origin: str = "",
    ) -> ModelShape:
        """A decoder-only transformer: attention (q, k, v, o), a gated or plain MLP, two norms a block."""
        head_dim = head_dim or hidden // heads
        kv_dim = kv_heads * head_dim
        attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_dim
        mlp = (3 if gated else 2) * hidden * intermediate
        per_layer = attention + mlp + 2 * hidden
        outside = (1 if tied else 2) * vocab * hidden + positions * hidden + hidden
        return ModelShape(
            layers * per_layer + outside,
            hidden,
            layers,
            vocab,
            kv_dim,
            intermediate,
            heads,
            tied,
            outside,
            origin,
        )

    @staticmethod
    def llama(  # noqa: PLR0917 - the numbers of a Llama config.json
        hidden: int, layers: int, vocab: int, intermediate: int, kv_heads: int, heads: int, tied: bool = False
    ) -> ModelShape:
        """A Llama-shaped decoder (GQA attention, SwiGLU MLP)."""
        return ModelShape.decoder(hidden, layers, vocab, intermediate, kv_heads, heads, tied)


#: Published shapes (config.json of each model family).
SHAPES: dict[str, ModelShape] = {
    "llama-3.2-1b": ModelShape.llama(2048, 16, 128_256, 8192, 8, 32, tied=True),
    "llama-3.1-8b": ModelShape.llama(4096, 32, 128_256, 14_336, 8, 32),
    "llama-2-13b": ModelShape.llama(5120, 40, 32_000, 13_824, 40, 40),
    "llama-3.1-70b": ModelShape.llama(8192, 80, 128_256, 28_672, 8, 64),
}


def _first(config: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if config.get(name) is not None:
            return config[name]
    return None


def shape_from_config(config: Mapping[str, Any], origin: str) -> ModelShape:
    """The shape a transformers config.json describes; ShapeError for one the estimate cannot read."""
    kind = str(config.get("model_type") or "")
    if kind not in GATED | PLAIN:
        raise ShapeError(
            f"{origin}: architecture {kind or '(no model_type)'!r} is not one the memory estimate knows "
            f"(decoder-only: {', '.join(sorted(GATED | PLAIN))}); set baseModel.shape (hiddenSize, "
            "numLayers, numAttentionHeads, numKeyValueHeads, vocabSize, intermediateSize) to estimate it.",
            "UnknownArchitecture",
        )
    hidden = _first(config, "hidden_size", "n_embd", "d_model")
    layers = _first(config, "num_hidden_layers", "n_layer", "num_layers")
    heads = _first(config, "num_attention_heads", "n_head")
    vocab = _first(config, "vocab_size")
    if not all(isinstance(v, int) and v > 0 for v in (hidden, layers, heads, vocab)):
        raise ShapeError(
            f"{origin}: a {kind} config needs hidden size, layers, attention heads and vocabulary size; "
            "set baseModel.shape instead.",
            "IncompleteModelConfig",
        )
    kv_heads = _first(config, "num_key_value_heads", "multi_query_group_num") or heads
    if config.get("multi_query"):
        kv_heads = 1
    intermediate = _first(config, "intermediate_size", "n_inner", "ffn_dim") or 4 * hidden
    positions = (
        int(_first(config, "n_positions", "max_position_embeddings") or 0) if kind in LEARNED_POSITIONS else 0
    )
    tied = bool(config.get("tie_word_embeddings", kind in PLAIN))
    return ModelShape.decoder(
        hidden, layers, vocab, intermediate, kv_heads, heads, tied,
        gated=kind in GATED, head_dim=config.get("head_dim"), positions=positions, origin=origin,
    )  # fmt: skip


def nearest_llama(billions: float, origin: str) -> ModelShape:
    """The published Llama layout nearest in size, with the given parameter count (approximate)."""
    params = int(billions * 1e9)
    nearest = min(SHAPES.values(), key=lambda s: abs(s.params - params))
    return nearest.scaled_to(params, origin)


#: config.json fields that hold a model's context length, in the order the families use them.
CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def context_length(config: Mapping[str, Any]) -> int | None:
    """The longest sequence the model's positions cover, from its config.json (a multimodal model's
    `text_config` too); None when the config names none."""
    for source in (config, config.get("text_config") or {}):
        found = _first(source, *CONTEXT_FIELDS)
        if isinstance(found, int) and found > 0:
            return found
    return None
