"""deform_psroi_pool's cases: the case spec (its call and its kinks) and the plugin probe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from dcnbench.ops import rois as shared
from dcnbench.ops.deform_psroi_pool.contract import PSRoIPoolGeometry, check_call
from dcnbench.ops.deform_psroi_pool.points import psroi_pool_samples


@dataclass(frozen=True, kw_only=True)
class PSRoIPoolCase(shared.PoolCase):
    geometry: PSRoIPoolGeometry
    geometry_type: ClassVar[type] = PSRoIPoolGeometry

    @property
    def variant(self) -> str:
        return "psroi"

    def call(self, fn, t: dict[str, torch.Tensor]):
        return fn(t["input"], t["rois"], t.get("offset"), **self.geometry.kwargs(), no_trans=self.no_offset)

    def check_call(self, t: dict[str, torch.Tensor]) -> None:
        check_call(t["input"], t["rois"], t.get("offset"), **self.geometry.kwargs(), no_trans=self.no_offset)

    def samples_per_bin(self, rois: torch.Tensor) -> float:
        return float(self.geometry.sample_per_part) ** 2

    def kinked(self, rois: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
        """Integers, and MXNet's skip lines -0.5 and size-0.5, are the kinks."""
        geo, margin = self.geometry, self.kink_margin
        bad = torch.zeros(rois.shape[0], dtype=torch.bool)
        for pt in psroi_pool_samples(rois, offset, geo, offset is None):
            bad |= shared.near(pt.y, margin, (-0.5, geo.h - 0.5)) | shared.near(pt.x, margin, (-0.5, geo.w - 0.5))
        return bad


def probe_cases(dtype: str) -> list[PSRoIPoolCase]:
    geo = PSRoIPoolGeometry(n=2, c=2 * 9, h=6, w=7, rois=4, pooled_size=3, spatial_scale=1.0, sample_per_part=2,
                            group_size=3, part_size=3)
    return [PSRoIPoolCase(name="probe", geometry=geo, dtype=dtype, rois="inside", kink_margin=None)]
