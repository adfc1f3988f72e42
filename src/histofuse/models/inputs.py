"""Normalisation of the inputs every model's ``forward`` takes (bags, genomics, clinical, coordinates).

The functions here only reshape and check; they raise ``ValueError`` naming the wrong argument and
the expected shape, because a mismatch is a programming error in the caller, not a user input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "as_bag_list",
    "as_clinical_batch",
    "as_coords_list",
    "as_genomics_batch",
    "as_presence_mask",
    "batch_size_of",
    "select_columns",
]


def as_bag_list(bags: Tensor | Sequence[Tensor] | None) -> list[Tensor]:
    """Normalise one ``(N, D)`` bag, a ``(B, N, D)`` tensor or a sequence of bags to a list.

    ``None`` gives an empty list (a model without slides).
    """
    if bags is None:
        return []
    if isinstance(bags, Tensor):
        if bags.ndim == 2:
            return [bags]
        if bags.ndim == 3:
            return list(bags.unbind(0))
        raise ValueError(f"a bag tensor must be (N, D) or (B, N, D), got shape {tuple(bags.shape)}")
    return list(bags)


def batch_size_of(bags: Sequence[Tensor], *tables: Tensor | None) -> int:
    """Number of patients: the number of bags, else the first row count among ``tables``."""
    if bags:
        return len(bags)
    for table in tables:
        if table is not None:
            return 1 if table.ndim == 1 else int(table.shape[0])
    raise ValueError("forward needs at least one bag or one table of patient features")


def as_genomics_batch(genomics: Tensor | None, batch_size: int) -> Tensor | None:
    """Normalise a ``(G,)`` or ``(B, G)`` genomics tensor to ``(B, G)``."""
    if genomics is None:
        return None
    if genomics.ndim == 1:
        genomics = genomics.unsqueeze(0)
    if genomics.ndim != 2 or genomics.shape[0] != batch_size:
        raise ValueError(
            f"genomics must be (G,) or ({batch_size}, G) for {batch_size} bag(s), got {tuple(genomics.shape)}"
        )
    return genomics


def as_clinical_batch(clinical: Tensor | None, batch_size: int, n_clinical: int) -> Tensor | None:
    """Normalise a ``(C,)`` or ``(B, C)`` clinical tensor to ``(B, n_clinical)``."""
    if clinical is None:
        return None
    if clinical.ndim == 1:
        clinical = clinical.unsqueeze(0)
    if clinical.shape != (batch_size, n_clinical):
        raise ValueError(
            f"clinical must be ({batch_size}, {n_clinical}) for {batch_size} patient(s), "
            f"got {tuple(clinical.shape)}"
        )
    return clinical


def as_presence_mask(
    present: Tensor | None, batch_size: int, *, default: bool, device: torch.device
) -> Tensor:
    """A ``(B,)`` bool mask; ``None`` gives ``default`` for every patient."""
    if present is None:
        return torch.full((batch_size,), default, dtype=torch.bool, device=device)
    mask = present.reshape(-1).to(device=device, dtype=torch.bool)
    if mask.shape != (batch_size,):
        raise ValueError(f"clinical_present must hold {batch_size} values, got shape {tuple(present.shape)}")
    return mask


def as_coords_list(coords: Tensor | Sequence[Tensor] | None, bags: Sequence[Tensor]) -> list[Tensor]:
    """One ``(N_i, 2)`` integer coordinate tensor per bag, checked against the bag sizes."""
    if coords is None:
        raise ValueError("this model needs tile coordinates: pass coords, one (N_i, 2) tensor per bag")
    if isinstance(coords, Tensor):
        coords = [coords] if coords.ndim == 2 else list(coords.unbind(0))
    coord_list = list(coords)
    if len(coord_list) != len(bags):
        raise ValueError(f"coords holds {len(coord_list)} entries for {len(bags)} bag(s)")
    for number, (xy, bag) in enumerate(zip(coord_list, bags, strict=True)):
        if xy.ndim != 2 or xy.shape != (bag.shape[0], 2):
            raise ValueError(
                f"coords[{number}] must be ({bag.shape[0]}, 2) to match its bag, got {tuple(xy.shape)}"
            )
        if xy.is_floating_point() and not bool(torch.equal(xy, xy.round())):
            raise ValueError(f"coords[{number}] must hold integer pixel positions")
    return coord_list


def select_columns(table: Tensor, columns: Sequence[int]) -> Tensor:
    """Columns ``columns`` of a ``(B, G)`` table."""
    return table[:, torch.as_tensor(list(columns), dtype=torch.long, device=table.device)]
