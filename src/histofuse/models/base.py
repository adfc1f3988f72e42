"""The base of the registered models: one place that turns ``forward``'s arguments into a batch.

Every model takes ``forward(bags, genomics=None, clinical=None, coords=None, *,
clinical_present=None)`` (see :mod:`histofuse.models.registry`). :class:`MultimodalModel` checks
and batches these inputs once, according to the modalities the model declares, and hands a
:class:`ModelInputs` to the model's own :meth:`MultimodalModel.compute`:

* slides (``needs_slides``): the bags as a list, on the parameters' device and dtype; a model that
  reads slides refuses a call without any bag. A bag may still be empty (``N = 0``, a patient
  without tile features): each model represents it by its own learned "missing" embedding;
* genomics (``needs_genomics``): a ``(B, G)`` table on the parameters' device and dtype;
* clinical (``reads_clinical``; ``needs_clinical`` when it cannot do without): a ``(B, C)`` table;
  ``clinical_present`` and ``coords`` are passed through for the models that read them.

The batch size is the number of bags, else the row count of the first table the model reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from histofuse.models.inputs import as_bag_list, as_clinical_batch, as_genomics_batch, batch_size_of

__all__ = ["BagsArg", "CoordsArg", "ModelInputs", "MultimodalModel"]

BagsArg = Tensor | Sequence[Tensor] | None
CoordsArg = Tensor | Sequence[Tensor] | None


@dataclass(frozen=True)
class ModelInputs:
    """One batch of patients, checked and normalised for a model's :meth:`~MultimodalModel.compute`.

    ``bags`` is empty for a model that does not read slides and was given none; ``genomics`` and
    ``clinical`` are ``None`` when not given (or not read by the model).
    """

    bags: list[Tensor]
    genomics: Tensor | None
    clinical: Tensor | None
    coords: CoordsArg
    clinical_present: Tensor | None
    batch_size: int


class MultimodalModel(nn.Module):
    """A model over slides, genomics and clinical data; subclasses declare what they read.

    Subclasses set the class attributes below and ``n_genomic`` / ``n_clinical`` (used in the error
    messages and the clinical shape check), and implement :meth:`compute`. The error messages are
    templates over ``{name}``, ``{n_genomic}`` and ``{n_clinical}``.
    """

    model_name: ClassVar[str] = "model"
    needs_slides: ClassVar[bool] = True
    reads_clinical: ClassVar[bool] = False
    needs_clinical: ClassVar[bool] = False
    no_bag_message: ClassVar[str] = "{name} needs at least one bag"
    no_genomics_message: ClassVar[str] = "{name} needs genomics with {n_genomic} features per patient"
    no_clinical_message: ClassVar[str] = "{name} needs clinical with {n_clinical} features per patient"
    n_genomic: int = 0
    n_clinical: int = 0

    @property
    def needs_genomics(self) -> bool:
        """Whether ``forward`` requires genomics (a model with genomic features reads them)."""
        return self.n_genomic > 0

    def _message(self, template: str) -> str:
        return template.format(name=self.model_name, n_genomic=self.n_genomic, n_clinical=self.n_clinical)

    def prepare_inputs(
        self,
        bags: BagsArg,
        genomics: Tensor | None,
        clinical: Tensor | None,
        coords: CoordsArg,
        clinical_present: Tensor | None,
    ) -> ModelInputs:
        """Check ``forward``'s arguments against the declared modalities and batch them."""
        bag_list = as_bag_list(bags)
        if self.needs_slides and not bag_list:
            raise ValueError(self._message(self.no_bag_message))
        if self.needs_genomics and genomics is None:
            raise ValueError(self._message(self.no_genomics_message))
        if self.needs_clinical and clinical is None:
            raise ValueError(self._message(self.no_clinical_message))
        read_genomics = genomics if self.needs_genomics else None
        read_clinical = clinical if self.reads_clinical else None
        batch_size = batch_size_of(bag_list, read_genomics, read_clinical)
        reference = next(self.parameters())
        device, dtype = reference.device, reference.dtype
        genomic_batch = as_genomics_batch(read_genomics, batch_size)
        clinical_batch = as_clinical_batch(read_clinical, batch_size, self.n_clinical)
        return ModelInputs(
            bags=[bag.to(device=device, dtype=dtype) for bag in bag_list] if self.needs_slides else bag_list,
            genomics=None if genomic_batch is None else genomic_batch.to(device=device, dtype=dtype),
            clinical=clinical_batch,
            coords=coords,
            clinical_present=clinical_present,
            batch_size=batch_size,
        )

    def forward(
        self,
        bags: BagsArg = None,
        genomics: Tensor | None = None,
        clinical: Tensor | None = None,
        coords: CoordsArg = None,
        *,
        clinical_present: Tensor | None = None,
    ) -> dict[str, Any]:
        """The model's outputs for one batch (see :mod:`histofuse.models.registry`)."""
        return self.compute(self.prepare_inputs(bags, genomics, clinical, coords, clinical_present))

    def compute(self, inputs: ModelInputs) -> dict[str, Any]:
        """The model's own computation on checked, batched inputs."""
        raise NotImplementedError
