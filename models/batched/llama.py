"""The batched backend's own forward pass for Llama-family models (llama, mistral, qwen2).

It calls the transformers model's own weights and modules (embedding, RMS norms, projections,
rotary embedding, activation) in its own layer loop, so that every row of a batch can have its
own position, its own KV-cache slot and its own LoRA adapter, which transformers' forward cannot
express. Keys and values go into the static slots of `KVCache`; attention is torch SDPA with a
per-row mask (key position <= query position).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from .kv_cache import KVCache
from .lora import GROUPS, LoraBatch
from .own_modules import ModuleRows

SUPPORTED = ("llama", "mistral", "qwen2")


def unsupported_reason(model: torch.nn.Module) -> str:
    """'' when this loop can run the model, else why not (the model is then served by the reference path)."""
    config = model.config
    kind = getattr(config, "model_type", "?")
    if kind not in SUPPORTED:
        return f"architecture '{kind}' is not one of {', '.join(SUPPORTED)}"
    if getattr(model, "hf_quantizer", None) is not None or getattr(config, "quantization_config", None):
        return "a quantized base is served by the reference path"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        return f"'{kind}' model has an unexpected layout"
    attn = inner.layers[0].self_attn
    if hasattr(attn, "q_norm") or hasattr(attn, "sinks"):
        return f"'{kind}' attention has extra parts this loop does not compute"
    if any(p.dtype not in (torch.float32, torch.bfloat16, torch.float16) for p in model.parameters()):
        return "weights that are not float32/bfloat16/float16 are served by the reference path"
    return ""


def sliding_window(config) -> int | None:
    """A window this loop must not exceed (it attends to everything, which equals the window within it)."""
    window = getattr(config, "sliding_window", None)
    if not window:
        return None
    if config.model_type == "qwen2" and "sliding_attention" not in (getattr(config, "layer_types", None) or []):
        return None
    return int(window)


def _linear(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "base_layer", module)  # the base layer even under a PEFT wrapper


def fuse(modules: list[torch.nn.Module]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias) for projections that read the same input: one matmul instead of several.

    The modules' own weights become views into the fused tensor, so memory is not doubled and the
    transformers model (which the reference path may still run) keeps working unchanged.
    """
    layers = [_linear(m) for m in modules]
    if len(layers) == 1:
        return layers[0].weight, layers[0].bias
    weight = torch.cat([layer.weight.data for layer in layers])
    bias = None
    if any(layer.bias is not None for layer in layers):
        bias = torch.cat([layer.bias.data if layer.bias is not None else weight.new_zeros(layer.out_features)
                          for layer in layers])
    start = 0
    for layer in layers:
        end = start + layer.out_features
        layer.weight.data = weight[start:end]
        if layer.bias is not None:
            layer.bias.data = bias[start:end]
        start = end
    return weight, bias


@dataclass
class Layer:
    input_norm: torch.nn.Module
    post_norm: torch.nn.Module
    proj: dict[str, tuple[torch.Tensor, torch.Tensor | None]]  # projection group -> fused weight, bias
    sizes: dict[str, list[int]]  # projection group -> output width of each member
    act: object


@dataclass
class Batch:
    """One forward pass: T tokens for each of B rows (T = 1 when decoding)."""

    ids: torch.Tensor  # [B, T]
    positions: torch.Tensor  # [B, T] absolute positions of the tokens in their rows
    slots: torch.Tensor  # [B] the KV slot of each row
    kv_len: int  # keys to attend to: max position + 1 over the rows (rounded up is fine)
    write_slots: torch.Tensor  # [N] where each valid token's key and value go...
    write_positions: torch.Tensor  # [N] ...and at which position
    write_rows: torch.Tensor  # [N] which (row, token) of the batch, flattened as row * T + token
    prefix: bool = False  # slots are 0..B-1: read the cache as a view instead of gathering rows
    fresh: bool = False  # every row starts at position 0: attend to the new keys, not the cache
    lora: LoraBatch | None = None
    modules: ModuleRows | None = None  # rows whose adapter brings its own embed_tokens/lm_head
    unmasked: bool = False  # one token per row, each at position kv_len - 1: every key is visible, no mask


class LlamaForward:
    def __init__(self, model: torch.nn.Module):
        inner = model.model
        config = model.config
        self.embed = inner.embed_tokens.weight
        self.norm = inner.norm
        self.rotary = inner.rotary_emb
        self.lm_head = _linear(model.lm_head).weight
        attn = inner.layers[0].self_attn
        self.head_dim = attn.head_dim
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.scaling = attn.scaling
        self.layers = [self._layer_of(layer) for layer in inner.layers]

    @staticmethod
    def _layer_of(layer: torch.nn.Module) -> Layer:
        proj, sizes = {}, {}
        for group, members in GROUPS.items():
            parent = layer.self_attn if group in ("qkv", "o") else layer.mlp
            modules = [getattr(parent, m) for m in members]
            proj[group] = fuse(modules)
            sizes[group] = [_linear(m).out_features for m in modules]
        return Layer(layer.input_layernorm, layer.post_attention_layernorm, proj, sizes, layer.mlp.act_fn)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    def __call__(self, batch: Batch, cache: KVCache, keep: torch.Tensor) -> torch.Tensor:
        """Logits [len(keep), vocab] of the flattened (row * T + token) positions in `keep`."""
        x = F.embedding(batch.ids, self.embed)
        if batch.modules is not None:
            x = batch.modules.embed(batch.ids, x)
        rows, width = batch.ids.shape
        cos, sin = self.rotary(x, batch.positions)
        mask = self._mask(batch)
        for index, layer in enumerate(self.layers):
            x = self._layer(index, layer, x, cos, sin, mask, batch, cache)
        x = self.norm(x).reshape(rows * width, -1)[keep]
        if batch.modules is not None:
            return batch.modules.head(x, self.lm_head, keep // width)
        return F.linear(x, self.lm_head)

    def _mask(self, batch: Batch) -> torch.Tensor | None:
        """[B, 1, g*T, kv_len]: a query sees keys at positions up to its own, repeated for the grouped heads."""
        if batch.unmasked:
            return None
        keys = torch.arange(batch.kv_len, device=batch.positions.device)
        mask = keys.view(1, 1, -1) <= batch.positions.unsqueeze(-1)  # [B, T, kv_len]
        groups = self.heads // self.kv_heads
        return mask.unsqueeze(1).expand(-1, groups, -1, -1).reshape(mask.shape[0], 1, -1, batch.kv_len)

    def _proj(self, index: int, layer: Layer, group: str, x: torch.Tensor, lora: LoraBatch | None) -> torch.Tensor:
        weight, bias = layer.proj[group]
        y = F.linear(x, weight, bias)
        return y if lora is None else lora.apply(index, group, x, y)

    def _layer(self, index, layer: Layer, x, cos, sin, mask, batch: Batch, cache: KVCache) -> torch.Tensor:
        rows, width, _ = x.shape
        h = layer.input_norm(x)
        qkv = self._proj(index, layer, "qkv", h, batch.lora)
        q, k, v = (t.view(rows, width, -1, self.head_dim).transpose(1, 2)
                   for t in qkv.split(layer.sizes["qkv"], dim=-1))
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        keys, values = self._remember(index, k, v, batch, cache)
        attn = self._attend(q, keys, values, mask).transpose(1, 2).reshape(rows, width, -1)
        x = x + self._proj(index, layer, "o", attn, batch.lora)
        h = layer.post_norm(x)
        gate, up = self._proj(index, layer, "gate_up", h, batch.lora).split(layer.sizes["gate_up"], dim=-1)
        return x + self._proj(index, layer, "down", layer.act(gate) * up, batch.lora)

    def _remember(self, index: int, k, v, batch: Batch, cache: KVCache):
        """Write the new keys/values into the rows' slots; return what the queries attend to."""
        cache_k, cache_v = cache.k[index], cache.v[index]
        # [B, H, T, D] -> [B*T, H, D], then keep the valid tokens (padding of a chunk is never written)
        flat_k = k.transpose(1, 2).reshape(-1, *k.shape[1:2], k.shape[-1])[batch.write_rows]
        flat_v = v.transpose(1, 2).reshape(-1, *v.shape[1:2], v.shape[-1])[batch.write_rows]
        cache_k[batch.write_slots, :, batch.write_positions] = flat_k
        cache_v[batch.write_slots, :, batch.write_positions] = flat_v
        if batch.fresh:
            return k, v
        if batch.prefix:
            rows = k.shape[0]
            return cache_k[:rows, :, :batch.kv_len], cache_v[:rows, :, :batch.kv_len]
        return cache_k[batch.slots, :, :batch.kv_len], cache_v[batch.slots, :, :batch.kv_len]

    def _attend(self, q, keys, values, mask) -> torch.Tensor:
        """SDPA on the key/value heads: the query heads of one group become extra query rows (no repeat_kv copy)."""
        rows, heads, width, dim = q.shape
        packed = q.reshape(rows, self.kv_heads, (heads // self.kv_heads) * width, dim)
        out = F.scaled_dot_product_attention(packed, keys, values, attn_mask=mask, scale=self.scaling)
        return out.reshape(rows, heads, width, dim)
