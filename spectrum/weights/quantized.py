"""Quantized checkpoints read as the float tensors transformers dequantizes them to.

Two published layouts are understood; any other ``quantization_config`` is refused by its
``quant_method`` before a byte of weights is read (``quantization_of``).

- ``quant_method: "fp8"`` (block-scaled FP8, DeepSeek-V3/R1): ``X.weight`` in float8 and
  ``X.weight_scale_inv``, one float32 (or E8M0) scale per ``weight_block_size`` tile. This
  mirrors ``Fp8Dequantize._dequantize_one`` of ``transformers.integrations.finegrained_fp8``:
  both sides go to float32 (uint8 scales are E8M0 exponents, ``2 ** (byte - 127)``) and each
  element is one float32 product ``weight * scale`` of its tile's scale. Where the block does
  not divide the shape (DeepSeek-V3's 576-row ``kv_a_proj_with_mqa`` with 128-row tiles)
  the scale grid has ``ceil`` tiles and the last tile is partial, as DeepSeek's own
  ``weight_dequant`` reads it; transformers' function refuses such a shape.
  ``activation_scale`` tensors (unused once dequantized) are dropped, as transformers does.
- ``quant_method: "mxfp4"`` (gpt-oss): ``X_blocks`` (uint8, two E2M1 nibbles per byte, low
  nibble first, 16 bytes per 32-element block) and ``X_scales`` (uint8 E8M0 exponents, one
  per block) become ``X``. This mirrors ``_convert_moe_packed_tensors`` of
  ``transformers.integrations.mxfp4`` (``FP4_VALUES`` looked up, ``ldexp`` by ``scale -
  127``, the ``(experts, rows, cols)`` result transposed to ``(experts, cols, rows)``).

The dequantized values are returned in float32, exactly (one product per element), so a
merge rounds once, when it writes; ``DTYPE`` (bfloat16) is the dtype the dequantized model
holds and a merge writes, as transformers loads these checkpoints in bfloat16.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from spectrum.errors import UserError

SUPPORTED = ("fp8", "mxfp4")
DTYPE = torch.bfloat16
FP8_SCALE = ".weight_scale_inv"
FP8_UNUSED = ".activation_scale"
MX_BLOCKS, MX_SCALES = "_blocks", "_scales"
# E2M1 values by nibble (transformers.integrations.mxfp4.FP4_VALUES).
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
              -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)  # fmt: skip
MX_BLOCK = 32  # elements per MXFP4 block: 16 bytes of two nibbles


def quantization_of(config: dict, source: str) -> str | None:
    """The checkpoint's ``quant_method`` when it is one this module dequantizes, None when
    the config has no ``quantization_config``; any other method is a UserError naming it."""
    quantization = config.get("quantization_config")
    if quantization is None:
        return None
    method = quantization.get("quant_method") if isinstance(quantization, dict) else None
    if method not in SUPPORTED:
        raise UserError(
            f"{source}: quantization_config quant_method {method!r} is not supported; only "
            "block-scaled 'fp8' and 'mxfp4' parents are dequantized (give the unquantized "
            "or a dequantized bf16 copy of this model)"
        )
    return method


@dataclass(frozen=True)
class RawReader:
    """How the stored tensors of a checkpoint are read (its own names, shapes, dtypes)."""

    shape: Callable[[str], tuple[int, ...]]
    dtype: Callable[[str], torch.dtype]
    get: Callable[[str], Tensor]
    get_slice: Callable[[str, int, int], Tensor]


@dataclass(frozen=True)
class _Recipe:
    kind: str  # "fp8" or "mxfp4"
    data: str  # the stored weight / blocks
    scale: str | None  # its scales (None: an FP8 tensor stored without one)
    shape: tuple[int, ...]  # the dequantized tensor's
    block: tuple[int, int] = (1, 1)  # fp8 tile (rows, cols)


class Dequantized:
    """The dequantized tensors of one quantized checkpoint, by the names the model uses."""

    def __init__(self, method: str, config: dict, names: list[str], raw: RawReader, source: str):
        self._raw = raw
        plan = _fp8_plan if method == "fp8" else _mxfp4_plan
        self.recipes, self.hidden = plan(config, names, raw, source)
        self._last = threading.local()  # each reader thread's last dequantized experts

    def names(self, stored: list[str]) -> list[str]:
        """``stored`` with each quantized pair replaced, in place, by its dequantized name."""
        at = {recipe.data: name for name, recipe in self.recipes.items()}
        return [at.get(name, name) for name in stored if name not in self.hidden]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.recipes[name].shape

    def get(self, name: str) -> Tensor:
        shape = self.recipes[name].shape
        return self.get_slice(name, 0, math.prod(shape)).reshape(shape)

    def get_slice(self, name: str, start: int, stop: int) -> Tensor:
        """Elements ``start:stop`` of the flattened float32 dequantized tensor."""
        recipe = self.recipes[name]
        if recipe.kind == "fp8":
            return self._fp8_slice(recipe, start, stop)
        return self._mxfp4_slice(name, recipe, start, stop)

    def _fp8_slice(self, recipe: _Recipe, start: int, stop: int) -> Tensor:
        # Whole rows of the stored weight (contiguous bytes), each with its tile row's scales.
        cols = recipe.shape[-1]
        first, last = start // cols, -(-stop // cols)
        weight = self._raw.get_slice(recipe.data, first * cols, last * cols).view(-1, cols)
        if recipe.scale is None:
            rows = weight.to(torch.float32)
        else:
            rows = dequantize_fp8_rows(
                weight, _scales_float(self._raw.get(recipe.scale)), recipe.shape, first,
                recipe.block,
            )  # fmt: skip
        return rows.reshape(-1)[start - first * cols : stop - first * cols]

    def _mxfp4_slice(self, name: str, recipe: _Recipe, start: int, stop: int) -> Tensor:
        # Whole experts: the transpose mixes every stored row into each output row. The
        # engine reads an expert in many slices, so each thread keeps the experts of its
        # last partial read (a read of whole experts is used once: not kept).
        per_expert = math.prod(recipe.shape[1:])
        first, last = start // per_expert, -(-stop // per_expert)
        offset = first * per_expert
        key = (name, first, last)
        if getattr(self._last, "key", None) == key:
            return self._last.value.reshape(-1)[start - offset : stop - offset]
        self._last.key, self._last.value = None, None  # dropped before the next read
        stored = self._raw.shape(recipe.data)
        blocks_per, scales_per = math.prod(stored[1:]), math.prod(stored[1:-1])
        blocks = self._raw.get_slice(recipe.data, first * blocks_per, last * blocks_per)
        scales = self._raw.get_slice(recipe.scale, first * scales_per, last * scales_per)
        value = dequantize_mxfp4(
            blocks.view(last - first, *stored[1:]), scales.view(last - first, *stored[1:-1])
        )
        if (start, stop) != (offset, last * per_expert):
            self._last.key, self._last.value = key, value
        return value.reshape(-1)[start - offset : stop - offset]


def dequantize_fp8_rows(
    weight: Tensor, scales: Tensor, shape: tuple[int, ...], first: int, block: tuple[int, int]
) -> Tensor:
    """float32 ``weight * scale`` for stored rows ``first:first + len(weight)`` of a tensor of
    ``shape`` (leading dims flattened into rows), each element by its tile's scale."""
    rows, cols = shape[-2:]
    block_rows, block_cols = block
    tiles_down = -(-rows // block_rows)
    index = torch.arange(first, first + weight.shape[0])
    # A flattened row r is row r % rows of matrix r // rows; its tiles are a scale row.
    tile_row = (index // rows) * tiles_down + (index % rows) // block_rows
    row_scales = scales.reshape(-1, scales.shape[-1])[tile_row]
    per_element = row_scales.repeat_interleave(block_cols, dim=-1)[:, :cols]
    return weight.to(torch.float32) * per_element


def dequantize_mxfp4(blocks: Tensor, scales: Tensor) -> Tensor:
    """float32 ``(experts, cols, rows)`` from ``(experts, rows, groups, 16)`` blocks and
    ``(experts, rows, groups)`` E8M0 scales (``_convert_moe_packed_tensors``), one expert
    at a time so the temporaries stay one expert's."""
    lut = torch.tensor(FP4_VALUES, dtype=torch.float32)
    experts, rows, groups, width = blocks.shape
    out = torch.empty(experts, groups * width * 2, rows, dtype=torch.float32)
    for expert in range(experts):
        values = torch.empty(rows, groups, width * 2, dtype=torch.float32)
        values[..., 0::2] = lut[(blocks[expert] & 0x0F).long()]
        values[..., 1::2] = lut[(blocks[expert] >> 4).long()]
        exponents = (scales[expert].to(torch.int32) - 127).unsqueeze(-1)
        torch.ldexp(values, exponents, out=values)
        out[expert] = values.view(rows, -1).T
    return out


def _scales_float(scales: Tensor) -> Tensor:
    if scales.dtype == torch.uint8:  # E8M0 exponents stored as bytes
        return (scales.to(torch.float32) - 127.0).exp2()
    return scales.to(torch.float32)


def _fp8_plan(
    config: dict, names: list[str], raw: RawReader, source: str
) -> tuple[dict[str, _Recipe], set[str]]:
    block = tuple(config["quantization_config"].get("weight_block_size") or ())
    present = set(names)
    recipes: dict[str, _Recipe] = {}
    hidden = {name for name in names if name.endswith(FP8_UNUSED)}
    for name in names:
        if name.endswith(FP8_SCALE):
            weight = name.removesuffix(FP8_SCALE) + ".weight"
            if weight not in present:
                raise UserError(f"{source}: scale {name} has no weight {weight}")
            hidden.add(name)
            recipes[weight] = _fp8_recipe(weight, name, block, raw, source)
        elif raw.dtype(name).itemsize == 1 and raw.dtype(name).is_floating_point:
            scale = name.removesuffix(".weight") + FP8_SCALE
            if scale not in present:  # no scale: transformers casts the float8 values as is
                recipes[name] = _Recipe("fp8", name, None, raw.shape(name))
    return recipes, hidden


def _fp8_recipe(weight: str, scale: str, block: tuple, raw: RawReader, source: str) -> _Recipe:
    shape, grid = raw.shape(weight), raw.shape(scale)
    if not (raw.dtype(weight).is_floating_point and raw.dtype(weight).itemsize == 1):
        raise UserError(
            f"{source}: {weight} is {raw.dtype(weight)}, not float8; only float8 weights "
            "with a weight_scale_inv are dequantized"
        )
    if len(shape) < 2 or len(grid) != len(shape) or grid[:-2] != shape[:-2]:
        raise UserError(f"{source}: scale grid {list(grid)} of {weight} {list(shape)} is not tiled")
    rows, cols = shape[-2:]
    if not block:  # no weight_block_size: the grid divides the weight (as transformers reads it)
        if rows % grid[-2] or cols % grid[-1]:
            raise UserError(
                f"{source}: {weight} {list(shape)} is not divisible by its scale grid "
                f"{list(grid)} and the config gives no weight_block_size"
            )
        block = (rows // grid[-2], cols // grid[-1])
    tiles = (-(-rows // block[0]), -(-cols // block[1]))
    if tuple(grid[-2:]) != tiles:
        raise UserError(
            f"{source}: {scale} is {list(grid)}; {list(shape)} in {list(block)} tiles needs "
            f"{list(tiles)}"
        )
    return _Recipe("fp8", weight, scale, shape, (int(block[0]), int(block[1])))


def _mxfp4_plan(
    config: dict, names: list[str], raw: RawReader, source: str
) -> tuple[dict[str, _Recipe], set[str]]:
    present = set(names)
    recipes: dict[str, _Recipe] = {}
    hidden: set[str] = set()
    for name in names:
        if not name.endswith(MX_SCALES):
            continue
        stem = name.removesuffix(MX_SCALES)
        blocks = stem + MX_BLOCKS
        if blocks not in present:
            raise UserError(f"{source}: MXFP4 scales {name} have no blocks {blocks}")
        hidden.add(name)
        shape, grid = raw.shape(blocks), raw.shape(name)
        if (
            len(shape) != 4
            or shape[-1] * 2 != MX_BLOCK
            or shape[:-1] != grid
            or raw.dtype(blocks) != torch.uint8
            or raw.dtype(name) != torch.uint8
        ):
            raise UserError(
                f"{source}: {blocks} {list(shape)} with scales {list(grid)} is not the MXFP4 "
                "layout transformers dequantizes (uint8 (experts, rows, groups, 16) blocks, "
                "uint8 (experts, rows, groups) scales)"
            )
        experts, rows, groups = grid
        recipes[stem] = _Recipe("mxfp4", blocks, name, (experts, groups * MX_BLOCK, rows))
    return recipes, hidden


def dequantized_config(config: dict) -> dict:
    """``config`` of the dequantized model: no ``quantization_config``, held in bfloat16."""
    plain = {key: value for key, value in config.items() if key != "quantization_config"}
    for key in [key for key in ("torch_dtype", "dtype") if key in plain] or ["torch_dtype"]:
        plain[key] = str(DTYPE).removeprefix("torch.")
    return plain
