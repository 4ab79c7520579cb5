"""The Earth4D encoding of `deepearth_jax.models.earth4d` in PyTorch, for parity tests and the benchmark.

Same layouts, formulas and table layout as the JAX encoder; the table rows are read with `index_select`,
whose gradient PyTorch accumulates with `index_add_`. Hashes are computed in int32, whose products wrap like
uint32 ones, masked to the power-of-two table size: equal to the JAX uint32 result. Needs torch.
"""

from __future__ import annotations

import numpy as np

from deepearth_jax.models.earth4d import PRIMES, GridLayout


def _corners(per_axis, combine):
    """(B, L, 2^d) from per-axis (B, L, d, 2) values, axis 0 the fastest corner bit (as the JAX encoder)."""
    out = per_axis[:, :, 0, :]
    for axis in range(1, per_axis.shape[2]):
        out = combine(per_axis[:, :, axis, :, None], out[:, :, None, :]).reshape(*out.shape[:2], -1)
    return out


class TorchEarth4D:
    """`encode(table, coords)`: table `(entries, F)` float32 tensor, coords `(B, 5)` -> `(B, G * L * F)`."""

    def __init__(self, layouts: tuple[GridLayout, ...], interpolation: str = "linear", device: str = "cpu"):
        import torch

        self.layouts, self.interpolation = layouts, interpolation
        self.grids = []
        for layout in layouts:
            resolution = np.asarray(layout.resolution, np.int32)
            periodic = np.asarray(layout.periodic)
            top = np.where(periodic, np.inf, resolution - 2).astype(np.float32)
            n_dense = sum(layout.dense)
            primes = np.asarray(PRIMES[: layout.dim], np.uint32).view(np.int32)  # same bits, wrapped
            mask = np.asarray(layout.size[n_dense:], np.int32) - 1

            def tensor(value, dtype=None):
                return torch.tensor(np.asarray(value, dtype), device=device)

            self.grids.append(
                {
                    "axes": tensor(layout.axes, np.int64),
                    "scale": tensor(layout.scale, np.float32),
                    "top": tensor(top),
                    "periodic": tensor(periodic[:, None]),
                    "any_periodic": bool(periodic.any()),
                    "modulus": tensor(np.maximum(resolution, 1)[..., None]),
                    "sides": tensor([0, 1], np.int32),
                    "stride": tensor(np.asarray(layout.stride, np.int32)[:n_dense, :, None]),
                    "primes": tensor(primes[:, None]),
                    "mask": tensor(mask[:, None]),
                    "offset": tensor(np.asarray(layout.offset, np.int32)[:, None]),
                    "n_dense": n_dense,
                    "levels": layout.levels,
                    "dim": layout.dim,
                }
            )

    def _grid(self, coords, g):
        """(index (B, L, C) int32, weight (B, L, C) float32) of one grid, as the JAX encoder computes it."""
        import torch

        position = coords[:, None, :].index_select(2, g["axes"]) * g["scale"]  # (B, L, d)
        lower = torch.minimum(torch.floor(position), g["top"])
        fraction = position - lower
        if self.interpolation == "smoothstep":
            fraction = fraction * fraction * (3.0 - 2.0 * fraction)
        weight = _corners(torch.stack([1.0 - fraction, fraction], -1), torch.mul)
        vertex = lower.int()[..., None] + g["sides"]  # (B, L, d, 2)
        if g["any_periodic"]:
            vertex = torch.where(g["periodic"], torch.remainder(vertex, g["modulus"]), vertex)
        n_dense, parts = g["n_dense"], []
        if n_dense:
            parts.append(_corners(vertex[:, :n_dense] * g["stride"], torch.add))
        if n_dense < g["levels"]:
            # int32 products wrap like uint32 ones: the masked low bits are the uint64 formula's.
            hashed = _corners(vertex[:, n_dense:] * g["primes"], torch.bitwise_xor)
            parts.append(torch.bitwise_and(hashed, g["mask"]))
        index = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
        return index + g["offset"], weight

    def indices_and_weights(self, coords):
        """Per grid: (index (B, L, C) int32, weight (B, L, C) float32), for the parity tests."""
        import torch

        coords = torch.clamp(torch.nan_to_num(coords, nan=0.0), 0.0, 1.0)
        return [self._grid(coords, g) for g in self.grids]

    def encode(self, table, coords):
        import torch

        batch, features = coords.shape[0], table.shape[1]
        pieces = self.indices_and_weights(coords)
        index = torch.cat([i.reshape(batch, -1) for i, _ in pieces], 1)
        weight = torch.cat([w.reshape(batch, -1) for _, w in pieces], 1)
        rows = table.index_select(0, index.reshape(-1).long()).view(batch, -1, features) * weight[..., None]
        widths = [g["levels"] << g["dim"] for g in self.grids]
        outputs = []  # split, not slices: its backward is one concatenation, not a zero-filled copy per slice
        for g, block in zip(self.grids, torch.split(rows, widths, dim=1), strict=True):
            block = block.reshape(batch, g["levels"], 1 << g["dim"], features)
            outputs.append(block.sum(2).reshape(batch, -1))
        return torch.cat(outputs, 1)
