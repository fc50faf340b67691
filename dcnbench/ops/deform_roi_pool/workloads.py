"""deform_roi_pool's cases: the case spec (its call and its kinks) and the plugin probe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from dcnbench.ops import rois as shared
from dcnbench.ops.deform_roi_pool.contract import RoIPoolGeometry, check_call
from dcnbench.ops.deform_roi_pool.points import roi_pool_samples


@dataclass(frozen=True, kw_only=True)
class RoIPoolCase(shared.PoolCase):
    geometry: RoIPoolGeometry
    geometry_type: ClassVar[type] = RoIPoolGeometry

    @property
    def variant(self) -> str:
        return "roi"

    @property
    def keeps_offset_argument(self) -> bool:
        return not self.no_offset

    def call(self, fn, t: dict[str, torch.Tensor]):
        return fn(t["input"], t["rois"], t.get("offset"), **self.geometry.kwargs())

    def check_call(self, t: dict[str, torch.Tensor]) -> None:
        check_call(t["input"], t["rois"], t.get("offset"), **self.geometry.kwargs())

    def samples_per_bin(self, rois: torch.Tensor) -> float:
        geo = self.geometry
        if geo.sampling_ratio > 0:
            return float(geo.sampling_ratio) ** 2
        if not rois.shape[0]:
            return 0.0
        s, (ph, pw) = geo.spatial_scale, geo.output_size
        grid_h = torch.ceil((rois[:, 4] - rois[:, 2]) * s / ph).clamp(min=0)
        grid_w = torch.ceil((rois[:, 3] - rois[:, 1]) * s / pw).clamp(min=0)
        return float((grid_h * grid_w).max())

    def kinked(self, rois: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
        """Integers are the kinks; for adaptive grids, ceil(RoI size / bins) must not depend on the last bit."""
        geo, margin = self.geometry, self.kink_margin
        bad = torch.zeros(rois.shape[0], dtype=torch.bool)
        points, _ = roi_pool_samples(rois, offset, geo)
        for pt in points:
            active = pt.active if pt.active is not None else torch.ones_like(pt.y, dtype=torch.bool)
            bad |= shared.near(torch.where(active, pt.y, 0.5), margin) | shared.near(torch.where(active, pt.x, 0.5), margin)
        if geo.sampling_ratio == 0:
            s = geo.spatial_scale
            for size, bins in ((rois[:, 4] * s - rois[:, 2] * s, geo.output_size[0]),
                               (rois[:, 3] * s - rois[:, 1] * s, geo.output_size[1])):
                ratio = size / bins
                bad |= ((ratio - torch.round(ratio)).abs() < margin) & (ratio.abs() > margin)
        return bad


def probe_cases(dtype: str) -> list[RoIPoolCase]:
    geo = RoIPoolGeometry(n=2, c=3, h=6, w=7, rois=4, output_size=(2, 3))
    return [RoIPoolCase(name="probe", geometry=geo, dtype=dtype, rois="inside", kink_margin=None)]
