"""The Earth4D encoding of `deepearth_jax.models.earth4d` in PyTorch, for parity tests and the benchmark.

Same layouts, formulas and table layout as the JAX encoder; the table rows are read with `index_select`,
whose gradient PyTorch accumulates with `index_add_`. Hashes are computed in int64 (the products stay below
2^63) and masked to the power-of-two table size, equal to the JAX uint32 result. Needs torch.
"""

from __future__ import annotations

import numpy as np

from deepearth_jax.models.earth4d import GridLayout, corner_bits


class TorchEarth4D:
    """`encode(table, coords)`: table `(entries, F)` float32 tensor, coords `(B, 5)` -> `(B, G * L * F)`."""

    def __init__(self, layouts: tuple[GridLayout, ...], interpolation: str = "linear", device: str = "cpu"):
        import torch

        self.layouts, self.interpolation = layouts, interpolation
        self.grids = []
        for layout in layouts:
            resolution = np.asarray(layout.resolution, np.int64)
            periodic = np.asarray(layout.periodic)
            top = np.where(periodic, np.inf, resolution - 2).astype(np.float32)
            mask = np.where(layout.dense, 0, np.asarray(layout.size, np.int64) - 1)
            self.grids.append(
                {
                    "axes": torch.tensor(layout.axes, device=device),
                    "scale": torch.tensor(np.asarray(layout.scale, np.float32), device=device),
                    "top": torch.tensor(top, device=device),
                    "periodic": torch.tensor(periodic, device=device),
                    "modulus": torch.tensor(np.maximum(resolution, 1), device=device),
                    "bits": torch.tensor(corner_bits(layout.dim).astype(np.int64), device=device),
                    "stride": torch.tensor(np.asarray(layout.stride, np.int64), device=device),
                    "primes": torch.tensor([1, 2654435761, 805459861][: layout.dim], device=device),
                    "dense": torch.tensor(layout.dense, device=device),
                    "mask": torch.tensor(mask, device=device),
                    "offset": torch.tensor(np.asarray(layout.offset, np.int64), device=device),
                    "levels": layout.levels,
                    "dim": layout.dim,
                }
            )

    def _grid(self, coords, g):
        """(index (B, L, C) int64, weight (B, L, C) float32) of one grid."""
        import torch

        position = coords[:, None, :].index_select(2, g["axes"]) * g["scale"]  # (B, L, d)
        lower = torch.minimum(torch.floor(position), g["top"])
        fraction = position - lower
        if self.interpolation == "smoothstep":
            fraction = fraction * fraction * (3.0 - 2.0 * fraction)
        corner = lower.long()[:, :, None, :] + g["bits"]  # (B, L, C, d)
        corner = torch.where(g["periodic"], torch.remainder(corner, g["modulus"][:, None, :]), corner)
        upper = g["bits"].bool()
        frac = fraction[:, :, None, :]
        weight = torch.where(upper, frac, 1.0 - frac).prod(-1)
        dense = (corner * g["stride"][:, None, :]).sum(-1)
        hashed = corner * g["primes"]
        hash_index = hashed[..., 0]
        for axis in range(1, g["dim"]):
            hash_index = torch.bitwise_xor(hash_index, hashed[..., axis])
        hash_index = torch.bitwise_and(hash_index, g["mask"][:, None])
        index = torch.where(g["dense"][:, None], dense, hash_index) + g["offset"][:, None]
        return index, weight

    def indices_and_weights(self, coords):
        """Per grid: (index (B, L, C) int64, weight (B, L, C) float32), for the parity tests."""
        import torch

        coords = torch.clamp(torch.nan_to_num(coords, nan=0.0), 0.0, 1.0)
        return [self._grid(coords, g) for g in self.grids]

    def encode(self, table, coords):
        import torch

        batch, features = coords.shape[0], table.shape[1]
        pieces = self.indices_and_weights(coords)
        index = torch.cat([i.reshape(batch, -1) for i, _ in pieces], 1)
        weight = torch.cat([w.reshape(batch, -1) for _, w in pieces], 1)
        rows = table.index_select(0, index.reshape(-1)).view(batch, -1, features) * weight[..., None]
        outputs, start = [], 0
        for g in self.grids:
            width = g["levels"] << g["dim"]
            block = rows[:, start : start + width].reshape(batch, g["levels"], 1 << g["dim"], features)
            outputs.append(block.sum(2).reshape(batch, -1))
            start += width
        return torch.cat(outputs, 1)
