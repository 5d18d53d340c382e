"""KVCache: a preallocated key/value cache with one length per row, for batched decoding.

Contract (relied on by the engine): `model(input_ids[B, T], cache)` puts token t of row b at
absolute position `cache.lengths[b] + t` (RoPE), writes its keys/values there, lets it attend to
keys j <= lengths[b] + t, and then does `cache.lengths += T`. `cache.select(rows)` keeps,
reorders or repeats rows (copy one prompt's cache into G sample rows; drop finished rows).
`model.hidden(input_ids, cache, lengths)`: a right-padded batch whose row b holds lengths[b]
real tokens; only those are counted (`cache.lengths += lengths`), and padding never evicts a
real token from a sliding-window ring.

Sliding-window layers (Gemma 3's local layers: a query sees itself and the window - 1 keys
before it) keep a ring of window - 1 slots instead of max_len: position p lives in slot
p % (window - 1), so their memory grows with the window, not with the sequence. A forward
attends over [the ring as it was | the new tokens] (the mask says which slots hold positions
still in each query's window), then writes the newest window - 1 real tokens into the ring.

Linear-attention layers (Qwen3.5's Gated DeltaNet) hold no keys or values: their cache is a
fixed-size state per row, `conv[layer]` [B, conv_dim, kernel - 1] (the convolution's last inputs,
in the model's dtype) and `state[layer]` [B, value heads, key_head_dim, value_head_dim] (the
delta rule's state, in fp32 whatever the model's dtype: it accumulates over the whole sequence).
The layer itself reads and replaces them (linear_attention.py); `select` copies them with the rest.
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
    counts: torch.Tensor | None = None  # [B] real new tokens per row (right padding after); None: all T
    _grouped: dict[tuple[int, int | None], torch.Tensor | None] = field(default_factory=dict)

    @property
    def mask(self) -> torch.Tensor | None:
        """[B, 1, T, key_len] bool, True = may attend (key j <= the query's position); None when
        every key is visible."""
        if self.all_visible:
            return None
        keys = torch.arange(self.key_len, device=self.positions.device)
        return (keys <= self.positions[:, :, None])[:, None]

    def window_mask(self, window: int, ring: int) -> torch.Tensor | None:
        """The mask of a sliding-window layer over its keys [ring slots | T new tokens] (KVCache.write):
        [B, 1, T, ring + T] (just [1, 1, T, T] on a prefill from empty, which reads no ring), True
        = may attend; None when every key is visible."""
        T = self.positions.shape[1]
        device = self.positions.device
        t = torch.arange(T, device=device)
        new = (t[:, None] >= t[None, :]) & (t[:, None] - t[None, :] < window)  # [T, T]
        if self.causal:
            return new[None, None]
        lengths = self.positions[:, 0]  # tokens held before this step
        if self.all_visible and int(lengths.min()) >= ring and ring == window - 1:
            return None  # a decode step with full rings: the ring and the new token are the window
        # Slot s holds the latest position p < length with p = s (mod ring); p < 0: never written.
        slots = torch.arange(ring, device=device)
        held = lengths[:, None] - 1 - torch.remainder(lengths[:, None] - 1 - slots, ring)  # [B, ring]
        old = (held[:, None, :] >= 0) & (held[:, None, :] > self.positions[:, :, None] - window)  # [B, T, ring]
        return torch.cat([old, new.expand(len(lengths), T, T)], dim=-1)[:, None]

    def grouped_mask(self, group: int, window: int | None = None, ring: int = 0) -> torch.Tensor | None:
        """The mask for queries laid out as rows (t, g) of [B, Hkv, T*group, D] (see layers.attend);
        `window`, `ring`: a sliding-window layer's (window_mask).

        The mask does not depend on the head, so repeating each query row's mask `group` times is
        exact. It is built at the first layer that asks (a causal prefill with grouped-query
        attention never does: B x T x T bytes saved, 134 MB for 8 prompts of 4,096 tokens) and
        shared by the others.
        """
        if (group, window) not in self._grouped:
            m = self.mask if window is None else self.window_mask(window, ring)
            self._grouped[group, window] = m if m is None or group == 1 else m.repeat_interleave(group, dim=2)
        return self._grouped[group, window]


def ring_size(window: int | None, max_len: int) -> int | None:
    """Slots of a sliding-window layer's ring (window - 1: the new token makes the window), never
    more than max_len; None for a full-attention layer."""
    return None if window is None else min(max(window - 1, 1), max_len)


def linear_state_shapes(config: ModelConfig) -> tuple[tuple[int, int], tuple[int, int, int]]:
    """Per row, a linear-attention layer's conv inputs [conv_dim, kernel - 1] and recurrent state
    [value heads, key_head_dim, value_head_dim]."""
    lin = config.linear
    return (lin.conv_dim, lin.conv_kernel_dim - 1), (lin.num_value_heads, lin.key_head_dim, lin.value_head_dim)


class KVCache:
    """Per-layer K/V tensors [B, Hkv, slots, D] and `lengths` [B] (tokens held per row); slots is
    max_len, or a sliding-window layer's ring (see the module's notes).

    Widths come from the config: for multi-head latent attention, K holds one latent row per
    token ([B, 1, max_len, kv_lora_rank + qk_rope_head_dim]) and V is empty (mla.py)."""

    def __init__(self, config: ModelConfig, batch: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.windows = [config.layer_window(i) for i in range(config.num_hidden_layers)]
        self.rings = [ring_size(w, max_len) for w in self.windows]
        slots = [max_len if ring is None else ring for ring in self.rings]
        linear = [config.is_linear_layer(i) for i in range(config.num_hidden_layers)]
        slots = [0 if lin else n for n, lin in zip(slots, linear)]  # linear layers: no keys, no values
        self.k = [torch.zeros(batch, config.cache_heads, n, config.k_head_dim, dtype=dtype, device=device)
                  for n in slots]
        self.v = [torch.zeros(batch, config.cache_heads, n, config.v_head_dim, dtype=dtype, device=device)
                  for n in slots]
        self.conv: list[torch.Tensor | None] = [None] * len(linear)
        self.state: list[torch.Tensor | None] = [None] * len(linear)
        for i in (i for i, lin in enumerate(linear) if lin):
            conv_shape, state_shape = linear_state_shapes(config)
            self.conv[i] = torch.zeros(batch, *conv_shape, dtype=dtype, device=device)
            self.state[i] = torch.zeros(batch, *state_shape, dtype=torch.float32, device=device)
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
        self.max_len = max_len

    @staticmethod
    def bytes_per_token(config: ModelConfig, dtype: torch.dtype = torch.float32) -> int:
        """Cache bytes one token takes over all layers: K and V of every KV head, or MLA's latent row
        (for sliding-window layers, while the sequence is shorter than their window; linear-attention
        layers hold no per-token cache and are not counted)."""
        attention_layers = config.num_hidden_layers - sum(map(config.is_linear_layer, range(config.num_hidden_layers)))
        return attention_layers * KVCache._bytes_per_layer_token(config, dtype)

    @staticmethod
    def _bytes_per_layer_token(config: ModelConfig, dtype: torch.dtype) -> int:
        per_layer = config.cache_heads * (config.k_head_dim + config.v_head_dim)
        return per_layer * torch.empty(0, dtype=dtype).element_size()

    @staticmethod
    def bytes_for(config: ModelConfig, positions: int, dtype: torch.dtype = torch.float32) -> int:
        """Cache bytes of one row holding `positions` tokens: sliding-window layers hold their ring,
        linear-attention layers their fixed state (conv inputs in `dtype`, the recurrent state in fp32)."""
        per_token = KVCache._bytes_per_layer_token(config, dtype)
        total = 0
        for i in range(config.num_hidden_layers):
            if config.is_linear_layer(i):
                conv, state = linear_state_shapes(config)
                total += (conv[0] * conv[1] * torch.empty(0, dtype=dtype).element_size()
                          + state[0] * state[1] * state[2] * 4)
            else:
                ring = ring_size(config.layer_window(i), positions)
                total += per_token * (positions if ring is None else ring)
        return total

    @property
    def nbytes(self) -> int:
        """Bytes the cache's tensors hold."""
        return sum(t.numel() * t.element_size() for t in self.k + self.v + self.conv + self.state if t is not None)

    def window_of(self, layer: int) -> int | None:
        return self.windows[layer]

    @property
    def batch(self) -> int:
        return self.lengths.shape[0]

    def select(self, rows: torch.Tensor | list[int]) -> "KVCache":
        """Keep/reorder/repeat rows in place (rows may repeat); returns self."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.lengths.device)
        self.k = [k.index_select(0, rows) for k in self.k]
        self.v = [v.index_select(0, rows) for v in self.v]
        self.conv = [None if c is None else c.index_select(0, rows) for c in self.conv]
        self.state = [None if s is None else s.index_select(0, rows) for s in self.state]
        self.lengths = self.lengths.index_select(0, rows)
        return self

    def step(self, T: int, counts: torch.Tensor | None = None) -> CacheStep:
        """Plan a forward of T new tokens per row, of which `counts[b]` are real (the rest right
        padding); does not change the cache."""
        if counts is not None:
            counts = counts.to(self.lengths.device)
        lo, hi = (int(x) for x in torch.aminmax(self.lengths))
        key_len = hi + T
        if key_len > self.max_len:
            raise ValueError(f"KVCache overflow: a row would hold {key_len} tokens, max_len is {self.max_len}")
        offsets = torch.arange(T, device=self.lengths.device)
        positions = self.lengths[:, None] + offsets  # [B, T]
        rows = torch.arange(self.batch, device=self.lengths.device)[:, None]
        return CacheStep(positions, lo if lo == hi else None, key_len, lo == hi and T == 1, rows,
                         causal=hi == 0 and T > 1, counts=counts)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, step: CacheStep):
        """Store k/v [B, T, Hkv, D] at each row's positions; return the keys/values to attend over:
        [B, Hkv, key_len, D], or for a sliding-window layer [ring | new] (_write_ring)."""
        if self.rings[layer] is not None:
            return self._write_ring(layer, k, v, step)
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

    def _write_ring(self, layer: int, k: torch.Tensor, v: torch.Tensor, step: CacheStep):
        """A sliding-window layer: return [ring as it was | new] ([B, Hkv, ring + T, D]; only the new
        ones on a prefill from empty), then write each row's newest `ring` real tokens into the ring."""
        ck, cv, ring = self.k[layer], self.v[layer], self.rings[layer]
        new_k, new_v = k.transpose(1, 2), v.transpose(1, 2)
        if step.causal:
            keys, values = new_k, new_v
        else:  # torch.cat copies: the writes below cannot change what this step attends to
            keys, values = torch.cat([ck, new_k], dim=2), torch.cat([cv, new_v], dim=2)
        T = k.shape[1]
        slots = torch.remainder(step.positions, ring)  # [B, T]
        if step.counts is None and T <= ring:  # every new token is real and fits: one scatter
            ck[step.rows, :, slots] = k
            cv[step.rows, :, slots] = v
        else:  # only real tokens, and of those the newest `ring` (the older ones left the window)
            counts = torch.full_like(step.positions[:, 0], T) if step.counts is None else step.counts
            t = torch.arange(T, device=slots.device)
            keep = (t < counts[:, None]) & (t >= counts[:, None] - ring)  # [B, T]
            rows, cols = keep.nonzero(as_tuple=True)
            ck[rows, :, slots[rows, cols]] = k[rows, cols]
            cv[rows, :, slots[rows, cols]] = v[rows, cols]
        return keys, values

    def advance(self, T: int | torch.Tensor) -> None:
        """Count T new tokens per row (or T[b] for row b)."""
        self.lengths += T
