"""What the two deformable RoI pooling operators share in their contracts: RoI and offset
validation ("got X, expected Y") and the shape-grammar parser. Torch-free at import.

RoIs are (K, 5) rows (batch_index, x1, y1, x2, y2) in image coordinates; `spatial_scale` maps them
onto the (N, C, H, W) feature map.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from dcnbench.errors import UsageError
from dcnbench.ops.contract import ContractError


def map_problems(geo) -> list[str]:
    found = []
    if min(geo.n, geo.c, geo.h, geo.w) < 1 or geo.rois < 0:
        found.append("N, C, H and W must be positive and the RoI count >= 0")
    if not (geo.spatial_scale > 0 and math.isfinite(geo.spatial_scale)):
        found.append(f"spatial_scale {geo.spatial_scale} must be a positive number")
    return found


def check_rois(input, rois) -> None:
    if input.dim() != 4:
        raise ContractError(f"input must be 4-D (N, C, H, W), got shape {tuple(input.shape)}")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ContractError(f"rois must have shape (K, 5), rows (batch_index, x1, y1, x2, y2), got {tuple(rois.shape)}")
    if rois.dtype != input.dtype or rois.device != input.device:
        raise ContractError(f"rois must match input's dtype and device, got {rois.dtype} on {rois.device}, "
                         f"expected {input.dtype} on {input.device}")
    if rois.shape[0] and not _tracing():
        index = rois[:, 0].detach()
        bad = (index != index.floor()) | (index < 0) | (index > input.shape[0] - 1)
        import torch

        if torch.compiler.is_compiling():  # no branch on values in a traced graph: checked when it runs
            torch._assert_async(~bad.any(), "rois hold a batch index that is not an integer in [0, N)")
            torch._assert_async(rois.detach().isfinite().all(), "rois contain NaN or infinity")
            return
        if bool(bad.any()):
            k = int(bad.nonzero()[0, 0])
            raise ContractError(f"rois[{k}, 0] = {float(index[k]):g} is not a batch index of the {input.shape[0]}-image input, "
                             f"expected an integer in [0, {input.shape[0] - 1}]")
        if not bool(rois.detach().isfinite().all()):
            raise ContractError("rois contain NaN or infinity")


def _tracing() -> bool:
    """Under torch.compile the values are symbolic: the checks that read them (batch indices,
    finiteness) cannot run, and would break the graph; the shape checks still do."""
    import torch

    return torch.compiler.is_compiling()


def check_offset(name: str, offset, input, expected: tuple[int, ...]) -> None:
    if offset is None:
        return
    if tuple(offset.shape) != expected:
        raise ContractError(f"{name} has shape {tuple(offset.shape)}, expected {expected}")
    if offset.dtype != input.dtype or offset.device != input.device:
        raise ContractError(f"{name} must match input's dtype and device, got {offset.dtype} on {offset.device}")


def parse_roi_shape(op: str, spec: str, grammar: str, example: str, extra_names: tuple[str, ...],
                    extra_kinds: tuple[Callable, ...], build: Callable):
    """`N,C,H,W:K,BINS[:extra,...]` -> build(n, c, h, w, k, bins_text, {name: value}) -> geometry."""
    hint = f"write {grammar}, e.g. {example}"
    parts = spec.strip().split(":")
    if len(parts) not in (2, 3):
        raise UsageError(f"malformed --shape '{spec}' for {op}: expected 2 or 3 ':'-separated parts", hint=hint)

    def num(text: str, kind=int):
        try:
            return kind(text.strip())
        except ValueError:
            raise UsageError(f"malformed --shape '{spec}': '{text}' is not {'an integer' if kind is int else 'a number'}",
                             hint=hint) from None

    head, body = parts[0].split(","), parts[1].split(",")
    if len(head) != 4 or len(body) != 2:
        raise UsageError(f"malformed --shape '{spec}': expected N,C,H,W then K,bins", hint=hint)
    extra = parts[2].split(",") if len(parts) == 3 else []
    if len(extra) > len(extra_names):
        raise UsageError(f"malformed --shape '{spec}': at most {','.join(extra_names)} after the second ':'", hint=hint)
    n, c, h, w = (num(t) for t in head)
    values = {name: num(t, kind) for name, kind, t in zip(extra_names, extra_kinds, extra)}
    geo = build(n, c, h, w, num(body[0]), body[1], values, num)
    problems = geo.problems()
    if problems:
        raise UsageError(f"invalid --shape '{spec}' for {op}: {'; '.join(problems)}", hint=hint)
    return geo


def pool_spec(*, here: str, case_class: str, identity: str, **fields):
    """The OpSpec of a RoI pooling operator laid out like deform_roi_pool's folder (module `here`):
    the pieces both pooling operators share (cases, files, the no-offset identity) filled in."""
    from dcnbench.ops.spec import OpSpec, Reference, lazy

    name = fields["name"]
    return OpSpec(
        **fields,
        default_preset="rfcn",
        suite=lazy(f"{here}.suite:default_suite"),
        differentiable=("input", "offset"),
        case_from_dict=lazy(f"{here}.workloads:{case_class}.from_dict"),
        oracle=lazy(f"{here}.oracle:{name}"),
        references={
            "no_offset": Reference(lazy("dcnbench.ops.rois:zero_offset"), ("output", "grad_input")),
            identity: Reference(lazy(f"{here}.references:{identity}_identity"), ("output", "grad_input")),
        },
        speed_case=lazy(f"{here}.workloads:{case_class}.for_speed"),
        probe_cases=lazy(f"{here}.workloads:probe_cases"),
        file_inputs=("rois", "offset"),
        geometry_for_files=lazy("dcnbench.ops.rois:geometry_for_files"),
        check_files=lazy("dcnbench.ops.rois:check_files"),
        cost=lazy("dcnbench.ops.rois:cost"),
        fuzz=lazy(f"{here}.fuzz:cases"),
        options=lazy(f"{here}.suite:pair_options"),
    )
