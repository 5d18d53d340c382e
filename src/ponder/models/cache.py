"""KVCache: a preallocated key/value cache with one length per row, for batched decoding.

Contract (relied on by the engine): `model(input_ids[B, T], cache)` puts token t of row b at
absolute position `cache.lengths[b] + t` (RoPE), writes its keys/values there, lets it attend to
keys j <= lengths[b] + t, and then does `cache.lengths += T`. `cache.select(rows)` keeps,
reorders or repeats rows (copy one prompt's cache into G sample rows; drop finished rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import ModelConfig


@dataclass
class CacheStep:
    """Where one forward's T new tokens go and which keys they see; computed once, used by every layer."""

    positions: torch.Tensor  # [B, T] absolute positions of the new tokens
    start: int | None  # the common start when every row has the same length (a slice write)
    key_len: int  # attend over cache slots [0, key_len): max(lengths) + T, not the whole cache
    all_visible: bool  # one new token per row, every row full up to it: nothing to mask
    rows: torch.Tensor  # [B, 1] row indices, for the scatter write of ragged rows
    causal: bool = False  # every row starts empty: the mask is plain causal over the T new tokens
    _grouped: dict[int, torch.Tensor | None] = field(default_factory=dict)

    @property
    def mask(self) -> torch.Tensor | None:
        """[B, 1, T, key_len] bool, True = may attend (key j <= the query's position); None when
        every key is visible."""
        if self.all_visible:
            return None
        keys = torch.arange(self.key_len, device=self.positions.device)
        return (keys <= self.positions[:, :, None])[:, None]

    def grouped_mask(self, group: int) -> torch.Tensor | None:
        """The mask for queries laid out as rows (t, g) of [B, Hkv, T*group, D] (see layers.attend).

        The mask does not depend on the head, so repeating each query row's mask `group` times is
        exact. It is built at the first layer that asks (a causal prefill with grouped-query
        attention never does: B x T x T bytes saved, 134 MB for 8 prompts of 4,096 tokens) and
        shared by the others.
        """
        if group not in self._grouped:
            m = self.mask
            self._grouped[group] = m if m is None or group == 1 else m.repeat_interleave(group, dim=2)
        return self._grouped[group]


class KVCache:
    """Per-layer K/V tensors [B, Hkv, max_len, D] and `lengths` [B] (tokens held per row).

    Widths come from the config: for multi-head latent attention, K holds one latent row per
    token ([B, 1, max_len, kv_lora_rank + qk_rope_head_dim]) and V is empty (mla.py)."""

    def __init__(self, config: ModelConfig, batch: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        shape = (batch, config.cache_heads, max_len)
        self.k = [torch.zeros(*shape, config.k_head_dim, dtype=dtype, device=device)
                  for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros(*shape, config.v_head_dim, dtype=dtype, device=device)
                  for _ in range(config.num_hidden_layers)]
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
        self.max_len = max_len

    @staticmethod
    def bytes_per_token(config: ModelConfig, dtype: torch.dtype = torch.float32) -> int:
        """Cache bytes one token takes over all layers: K and V of every KV head, or MLA's latent row."""
        per_layer = config.cache_heads * (config.k_head_dim + config.v_head_dim)
        return config.num_hidden_layers * per_layer * torch.empty(0, dtype=dtype).element_size()

    @property
    def batch(self) -> int:
        return self.lengths.shape[0]

    def select(self, rows: torch.Tensor | list[int]) -> "KVCache":
        """Keep/reorder/repeat rows in place (rows may repeat); returns self."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.lengths.device)
        self.k = [k.index_select(0, rows) for k in self.k]
        self.v = [v.index_select(0, rows) for v in self.v]
        self.lengths = self.lengths.index_select(0, rows)
        return self

    def step(self, T: int) -> CacheStep:
        """Plan a forward of T new tokens per row (does not change the cache)."""
        lo, hi = (int(x) for x in torch.aminmax(self.lengths))
        key_len = hi + T
        if key_len > self.max_len:
            raise ValueError(f"KVCache overflow: a row would hold {key_len} tokens, max_len is {self.max_len}")
        offsets = torch.arange(T, device=self.lengths.device)
        positions = self.lengths[:, None] + offsets  # [B, T]
        rows = torch.arange(self.batch, device=self.lengths.device)[:, None]
        return CacheStep(positions, lo if lo == hi else None, key_len, lo == hi and T == 1, rows,
                         causal=hi == 0 and T > 1)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, step: CacheStep):
        """Store k/v [B, T, Hkv, D] at each row's positions; return keys/values [B, Hkv, key_len, D]."""
        ck, cv = self.k[layer], self.v[layer]
        if step.start is not None:
            end = step.start + k.shape[1]
            ck[:, :, step.start:end] = k.transpose(1, 2)
            cv[:, :, step.start:end] = v.transpose(1, 2)
        else:
            # Advanced indices on dims 0 and 2 index as [B, T, Hkv, D]: the layout k already has.
            ck[step.rows, :, step.positions] = k
            cv[step.rows, :, step.positions] = v
        return ck[:, :, :step.key_len], cv[:, :, :step.key_len]

    def advance(self, T: int) -> None:
        self.lengths += T
