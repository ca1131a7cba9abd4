"""What a compiled step does per device, read from its optimised HLO text (``compiled.as_text()``,
XLA:TPU or XLA:CPU), with while-loop trip counts applied.

    stats = hlo_stats.analyse(compiled.as_text())
    stats.matmul_flops, stats.collective_bytes["all-gather"], stats.largest_collectives(5)

Why: XLA's ``cost_analysis()`` counts a while loop's body once, and scanned blocks run in one loop
(their backward in another), so the raw figure is a small fraction of the step. Here a loop body is
weighted by its trip count (``known_trip_count``, else the bound its condition compares against),
nested loops multiplied. Figures are per device and step (SPMD shapes are per device).
Collective bytes are result bytes (an all-gather's gathered array, a reduce-scatter's shard; the
all-reduce + slice XLA:TPU writes for most reduce-scatters counts as one). Matmul FLOPs are 2 x
MACs of ``dot`` and ``convolution``; Pallas kernels' work is not in the HLO, so their declared
cost estimates are summed apart (``kernel_flops``), and splash attention, which declares none, is
counted from its shapes (``_splash_flops``).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
import re

import numpy as np

COLLECTIVE_KINDS = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all",
                    "collective-permute")
RELAYOUT_OPS = ("copy", "transpose")

# Bytes per element; sub-byte types are rounded as XLA stores them unpacked on most paths.
_DTYPE_BYTES = {
    "pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "s32": 4, "u32": 4,
    "s64": 8, "u64": 8, "f16": 2, "bf16": 2, "f32": 4, "f64": 8, "c64": 8, "c128": 16,
    "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3": 1, "f8e4m3fnuz": 1, "f8e5m2fnuz": 1, "f8e4m3b11fnuz": 1,
    "f8e3m4": 1, "f8e8m0fnu": 1, "f4e2m1fn": 0.5, "token": 0,
}
# Instructions that move no data of their own (views, tuples, control flow).
_NO_TRAFFIC = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "call",
               "conditional", "after-all", "partition-id", "replica-id", "iota",
               "copy-done", "all-gather-done", "all-reduce-done", "collective-permute-done",
               "async-done", "async-update", "send-done", "recv-done", "opt-barrier"}

_COMMENT = re.compile(r"/\*.*?\*/")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")
_INSTR = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_ARRAY = re.compile(r"([a-z][a-z0-9]*)\[([0-9,]*)\](\{[^}]*\})?")


@dataclasses.dataclass(frozen=True)
class Array:
  dtype: str
  dims: tuple
  memory_space: int = 0   # TPU layouts mark on-chip memory S(1); 0 is HBM

  @property
  def bytes(self) -> float:
    return _DTYPE_BYTES.get(self.dtype, 4) * math.prod(self.dims)

  def __str__(self) -> str:
    return f"{self.dtype}[{','.join(map(str, self.dims))}]"


@dataclasses.dataclass
class Instruction:
  name: str
  opcode: str
  shapes: list          # the result's arrays (one, or a tuple's elements in order)
  operands: list        # operand instruction names
  attrs: str            # everything after the operand list
  is_root: bool = False

  @property
  def bytes(self) -> float:
    return sum(a.bytes for a in self.shapes)


@dataclasses.dataclass
class OpTotal:
  """One kind of op at one shape: how often it runs per step (trip counts applied) and its bytes."""
  kind: str
  shape: str            # e.g. "bf16[96,1568,3840]"
  bytes_each: float
  count: float = 0.0

  @property
  def bytes(self) -> float:
    return self.bytes_each * self.count


@dataclasses.dataclass
class HloStats:
  """Per device and step. ``*_bytes`` in bytes; ``matmul_flops`` in FLOPs."""
  collective_bytes: dict         # kind -> bytes (every kind in COLLECTIVE_KINDS present)
  collective_counts: dict        # kind -> executions per step
  collective_ops: list           # OpTotal per (kind, shape), largest total first
  matmul_flops: float
  matmul_count: float
  matmul_flops_by_source: dict   # ``source_label`` of the op -> FLOPs, largest first
  relayout_bytes: dict           # "copy"/"transpose" -> result bytes
  relayout_ops: list             # OpTotal per (op, shape), largest total first
  custom_calls: dict             # custom_call_target -> executions per step
  kernels: dict                  # Pallas kernel (tpu_custom_call, by instruction name) -> executions
  kernel_flops: float            # FLOPs the Pallas kernels declare (their cost_estimate)
  hbm_bytes: float               # operand + result bytes of every unfused op (an HBM estimate)
  loops: list                    # (while name, trip count, multiplier of the while itself)
  unknown_trip_counts: list      # while names whose trip count could not be read (counted once)

  @property
  def total_collective_bytes(self) -> float:
    return float(sum(self.collective_bytes.values()))

  def largest_collectives(self, n: int = 5) -> list:
    return self.collective_ops[:n]

  def to_json(self, top: int = 5) -> dict:
    ops = lambda xs: [{"kind": o.kind, "shape": o.shape, "count": o.count, "bytes": o.bytes}
                      for o in xs[:top]]
    return {"collective_bytes": self.collective_bytes, "collective_counts": self.collective_counts,
            "largest_collectives": ops(self.collective_ops), "matmul_flops": self.matmul_flops,
            "matmul_flops_by_source": dict(list(self.matmul_flops_by_source.items())[:3 * top]),
            "relayout_bytes": self.relayout_bytes, "largest_relayouts": ops(self.relayout_ops),
            "custom_calls": self.custom_calls, "kernels": self.kernels,
            "kernel_flops": self.kernel_flops, "hbm_bytes_estimate": self.hbm_bytes,
            "loops": [list(l) for l in self.loops],
            "unknown_trip_counts": self.unknown_trip_counts}


_OP_NAME = re.compile(r'op_name="([^"]*)"')
_SOURCE_NOISE = re.compile(r"(^|/)(stack/while/body/closed_call|closed_call|checkpoint|"
                           r"while/body|remat|\w+\.encode_tokens|\w+\.embed)(?=/)")


def source_label(attrs: str) -> str:
  """Where an op comes from, shortened from its ``op_name`` metadata: ``fwd``/``bwd`` (the
  backward, ``transpose(jvp(..))``), ``recompute`` where a rematerialised forward runs again in
  the backward, then the module path, e.g. ``bwd recompute Predictor blocks/block/attn/qkv``."""
  m = _OP_NAME.search(attrs)
  if not m:
    return "?"
  name = re.sub(r"^jit\([^)]*\)/", "", m.group(1))
  phase = "fwd"
  t = re.match(r"transpose\(jvp\((\w*)\)\)/?(.*)$", name)
  j = re.match(r"jvp\((\w*)\)/?(.*)$", name)
  if t:
    phase, model, rest = "bwd", t.group(1), t.group(2)
  elif j:
    model, rest = j.group(1), j.group(2)
  else:
    model, rest = "", name
  if "rematted_computation/" in rest:
    phase += " recompute"
    rest = rest.replace("rematted_computation/", "")
  rest = _SOURCE_NOISE.sub(r"\1", rest).strip("/")
  rest = re.sub(r"/(dot_general|conv_general_dilated|einsum)$", "", rest)
  return " ".join(x for x in (phase, model, rest) if x)


def _split_top(s: str, open_ch: str = "(", close_ch: str = ")") -> tuple[str, str]:
  """``s`` starts with ``open_ch``: (the text inside the matching bracket, the rest after it)."""
  depth = 0
  for i, ch in enumerate(s):
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
      if depth == 0:
        return s[1:i], s[i + 1:]
  return s[1:], ""


def _parse_instruction(line: str) -> Instruction | None:
  m = _INSTR.match(line)
  if not m:
    return None
  is_root, name, rest = bool(m.group(1)), m.group(2), m.group(3).strip()
  if rest.startswith("("):                     # tuple-shaped result
    shape_text, rest = _split_top(rest)
  else:
    shape_text, _, rest = rest.partition(" ")
  shapes = [Array(d, tuple(int(x) for x in dims.split(",") if x),
                  int(re.search(r"S\((\d+)\)", layout).group(1)) if "S(" in layout else 0)
            for d, dims, layout in _ARRAY.findall(shape_text)]
  om = re.match(r"\s*([\w\-]+)\(", rest)
  if not om:
    return None
  opcode = om.group(1)
  inside, attrs = _split_top(rest[om.end() - 1:])
  operands = re.findall(r"%([\w.\-]+)", inside)
  if opcode in ("constant", "parameter"):
    operands, attrs = [], inside + " " + attrs  # keep the literal / parameter number
  return Instruction(name, opcode, shapes, operands, attrs, is_root)


def parse_module(text: str) -> tuple[dict, str]:
  """HLO text -> ({computation name: {instruction name: Instruction}}, entry computation name)."""
  computations, entry, current = {}, None, None
  for raw in text.splitlines():
    line = _COMMENT.sub("", raw)
    if current is None:
      m = _HEADER.match(line)
      if m and not line.startswith("HloModule"):
        current = computations.setdefault(m.group(2), {})
        if m.group(1):
          entry = m.group(2)
      continue
    if line.strip() == "}":
      current = None
      continue
    instr = _parse_instruction(line)
    if instr is not None:
      current[instr.name] = instr
  if entry is None:
    raise ValueError("no ENTRY computation in this HLO text")
  return computations, entry


def _called(instr: Instruction, name: str) -> list:
  m = re.search(name + r"=\{?([^}=]*?)\}?(?:,\s*[\w_]+=|$)", instr.attrs)
  if not m:
    return []
  return re.findall(r"%?([\w.\-]+)", m.group(1))


def _constant_value(comp: dict, name: str, depth: int = 0):
  """The integer a scalar instruction holds, following copies/converts; None if not a constant."""
  instr = comp.get(name)
  if instr is None or depth > 8:
    return None
  if instr.opcode == "constant":
    m = re.match(r"\s*(-?\d+)", instr.attrs)
    return int(m.group(1)) if m else None
  if instr.opcode in ("copy", "convert", "bitcast", "reshape") and instr.operands:
    return _constant_value(comp, instr.operands[0], depth + 1)
  return None


def _root(comp: dict) -> Instruction | None:
  return next((i for i in comp.values() if i.is_root), None)


def _trip_count(computations: dict, comp: dict, loop: Instruction):
  """Iterations of ``loop`` (a while in ``comp``), or None when they cannot be read."""
  m = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', loop.attrs)
  if m:
    return int(m.group(1))
  cond_name = (_called(loop, "condition") or [None])[0]
  cond = computations.get(cond_name, {})
  root = _root(cond)
  if root is None:
    return None
  # XLA:CPU wraps the compare in a fusion; look through it, mapping its parameters to operands.
  operands, compare = root.operands, root
  if root.opcode == "fusion":
    callee = computations.get((_called(root, "calls") or [None])[0], {})
    compare = _root(callee)
    if compare is None:
      return None
    params = {i.name: int(re.match(r"\s*(\d+)", i.attrs).group(1))
              for i in callee.values() if i.opcode == "parameter"
              and re.match(r"\s*(\d+)", i.attrs)}
    operands = [root.operands[params[o]] if o in params else o for o in compare.operands]
  if compare.opcode != "compare" or len(operands) != 2:
    return None
  direction = (re.search(r"direction=(\w+)", compare.attrs) or [None, None])[1]
  values = [_constant_value(cond, o) for o in operands]
  if values[1] is not None and values[0] is None:
    bound, counter = values[1], operands[0]
  elif values[0] is not None and values[1] is None:
    bound, counter = values[0], operands[1]
    direction = {"GT": "LT", "GE": "LE", "LT": "GT", "LE": "GE"}.get(direction, direction)
  else:
    return None
  if direction not in ("LT", "LE", "NE"):
    return None
  # The counter's start: the element of the while's initial tuple that the condition reads.
  start = 0
  gte = cond.get(counter)
  init = comp.get(loop.operands[0]) if loop.operands else None
  if gte is not None and gte.opcode == "get-tuple-element" and init is not None \
      and init.opcode == "tuple":
    index = int(re.search(r"index=(\d+)", gte.attrs).group(1))
    value = _constant_value(comp, init.operands[index]) if index < len(init.operands) else None
    start = 0 if value is None else value
  return max(0, bound - start + (1 if direction == "LE" else 0))


def _matmul_flops(comp: dict, instr: Instruction) -> float:
  out = instr.shapes[0] if instr.shapes else None
  if out is None or len(instr.operands) < 2:
    return 0.0
  lhs, rhs = comp.get(instr.operands[0]), comp.get(instr.operands[1])
  if lhs is None or rhs is None or not lhs.shapes or not rhs.shapes:
    return 0.0
  if instr.opcode == "dot":
    m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", instr.attrs)
    dims = [int(d) for d in m.group(1).split(",") if d] if m else []
    k = math.prod(lhs.shapes[0].dims[d] for d in dims)
  else:
    return _convolution_flops(instr, lhs.shapes[0].dims, rhs.shapes[0].dims, out.dims)
  return 2.0 * math.prod(out.dims) * k


def _convolution_flops(instr: Instruction, lhs: tuple, kernel: tuple, out: tuple) -> float:
  """2 x the multiply-accumulates that meet a real input element: each output element sums over
  the kernel's input features and those window taps that land on the input, not on its padding
  or between the elements of a base-dilated (``lhs_dilate``) input. XLA:TPU writes batched
  matmuls this way: attention's batch and heads as a window of the batch's size over an input
  dilated by that size (one real tap per output), and a projection's gradient into heads as a
  16-tap window over a 1-element input padded by 15 on each side (one real tap)."""
  m = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", instr.attrs)
  if not m:
    return 0.0
  lhs_labels, kernel_labels, out_labels = m.groups()
  spatial = sorted({int(c) for c in out_labels if c.isdigit()})
  fields = _window_fields(instr.attrs)

  def field(key, i, default):
    values = fields.get(key, [])
    return values[i] if i < len(values) else default

  taps = 1
  for i in spatial:
    size_in = lhs[lhs_labels.index(str(i))]
    size_out = out[out_labels.index(str(i))]
    window = field("size", i, kernel[kernel_labels.index(str(i))])
    stride, rhs_dilate = field("stride", i, 1), field("rhs_dilate", i, 1)
    base = field("lhs_dilate", i, 1)
    pad_lo = field("pad", i, (0, 0))[0]
    p = (np.arange(size_out)[:, None] * stride + np.arange(window)[None, :] * rhs_dilate
         - pad_lo)
    taps *= int(np.count_nonzero((p >= 0) & (p % base == 0) & (p // base < size_in)))
  features_in = kernel[kernel_labels.index("i")]
  per_position = math.prod(out) // max(1, math.prod(out[out_labels.index(str(i))] for i in spatial))
  return 2.0 * per_position * features_in * taps


def _window_fields(attrs: str) -> dict:
  """A convolution's ``window={size=AxB stride=.. pad=l_h x l_h lhs_dilate=..}`` per spatial
  dimension: ints, and (lo, hi) pairs for ``pad``."""
  m = re.search(r"window=\{([^}]*)\}", attrs)
  fields = dict(kv.split("=", 1) for kv in m.group(1).split()) if m else {}
  out = {}
  for key, value in fields.items():
    parts = value.split("x")
    if key == "pad":
      out[key] = [tuple(int(v) for v in part.split("_")) for part in parts]
    elif all(p.lstrip("-").isdigit() for p in parts):
      out[key] = [int(p) for p in parts]
  return out


def _kernel_cost(instr: Instruction) -> dict:
  """A Pallas kernel's own cost estimate (``pl.CostEstimate``: flops, bytes_accessed), if any."""
  m = re.search(r'"cost_estimate":\{([^}]*)\}', instr.attrs)
  if not m:
    return {}
  return {k: float(v) for k, v in re.findall(r'"(\w+)":"?([0-9.eE+-]+)"?', m.group(1))}


# Matmul FLOPs per (query, key, head dimension) of each of jax's splash attention kernels, which
# declare no cost estimate: the forward computes q.k and p.v (2 matmuls); the fused backward
# recomputes q.k and computes do.v, p.do (dv), ds.q (dk) and ds.k (dq) (5); the separate
# backward kernels split these as dq (q.k, do.v, ds.k: 3) and dk/dv (4). 2 FLOPs per
# multiply-accumulate.
_SPLASH_MATMULS = (("splash_mha_fwd", 2), ("splash_mha_dkv", 5), ("splash_mha_dq", 3))


def _splash_flops(instr: Instruction) -> float:
  """Matmul FLOPs of one call of a splash attention kernel, from its operands' and results'
  shapes: q and k are its first two 4-D float operands (``[B, H, N, d]`` or sequence-minor
  ``[B, H, d, N]``), and its first 4-D result of q's dtype is ``[B, H, ., d]`` (the output, or
  dk; the forward's float32 statistics come after its output)."""
  per_mac = next((n for prefix, n in _SPLASH_MATMULS if instr.name.startswith(prefix)), None)
  m = re.search(r"operand_layout_constraints=\{(.*?)\}, \w+=", instr.attrs)
  if per_mac is None or not m:
    return 0.0
  operands = [Array(t, tuple(int(x) for x in d.split(",") if x))
              for t, d, _ in _ARRAY.findall(m.group(1))]
  operands = [a for a in operands if a.dtype in ("bf16", "f32", "f16") and len(a.dims) == 4]
  if len(operands) < 2:
    return 0.0
  q, k = operands[:2]
  results = [a.dims for a in instr.shapes if a.dtype == q.dtype and len(a.dims) == 4]
  if not results:
    return 0.0
  if per_mac == 5 and not any(len(a.dims) == 5 for a in instr.shapes):
    per_mac = 4  # the dk/dv kernel of the separate backward (the fused one also writes dq)
  d = results[0][-1]
  return 2.0 * per_mac * math.prod(q.dims) * math.prod(k.dims[2:]) / d


def _hbm(arrays) -> float:
  return sum(a.bytes for a in arrays if a.memory_space == 0)


def _hbm_bytes(computations: dict, comp: dict, instr: Instruction) -> float:
  """HBM bytes an unfused op reads and writes: its operands and result, except that a (fused)
  dynamic-slice reads only its slice and a dynamic-update-slice writes only its update in place,
  as a scanned model does per layer from its stacked weights and residuals."""
  def sliced(op, comp_, name_of_operand):
    return op.opcode == "dynamic-slice" and op.operands[:1] == [name_of_operand]
  if instr.opcode == "dynamic-slice":
    return 2 * _hbm(instr.shapes)
  if instr.opcode == "custom-call" and "bytes_accessed" in _kernel_cost(instr):
    return _kernel_cost(instr)["bytes_accessed"]
  if instr.opcode == "dynamic-update-slice" and len(instr.operands) > 1:
    return 2 * _hbm(comp[instr.operands[1]].shapes) if instr.operands[1] in comp else 0.0
  reads = [_hbm(comp[o].shapes) if o in comp else 0.0 for o in instr.operands]
  write = _hbm(instr.shapes)
  if instr.opcode == "fusion":
    callee = computations.get((_called(instr, "calls") or [None])[0], {})
    params = {}
    for i in callee.values():
      if i.opcode == "parameter" and re.match(r"\s*(\d+)", i.attrs):
        params[i.name] = int(re.match(r"\s*(\d+)", i.attrs).group(1))
    users = collections.defaultdict(list)
    for i in callee.values():
      for o in i.operands:
        users[o].append(i)
    for pname, index in params.items():
      us = users.get(pname, [])
      if index >= len(reads) or not us:
        continue
      if all(sliced(u, callee, pname) for u in us):
        reads[index] = sum(_hbm(u.shapes) for u in us)
      elif all(u.opcode == "dynamic-update-slice" and u.operands[0] == pname for u in us):
        reads[index] = 0.0                     # updated in place: only the update is written
    root = _root(callee)
    if root is not None and root.opcode == "dynamic-update-slice" and len(root.operands) > 1:
      update = callee.get(root.operands[1])
      write = _hbm(update.shapes) if update is not None else write
  return sum(reads) + write


def _reduce_scatter_fusion(computations: dict, fusion: Instruction, callees: list) -> bool:
  """Whether ``fusion`` is a reduce-scatter that XLA:TPU wrote as a fused all-reduce (its
  ``all-reduce-scatter`` fusions, ``SingleInputAllReduceScatterFusion``): an all-reduce inside,
  and a result smaller than the all-reduced array (each chip keeps its shard). Counted as the
  reduce-scatter it is, of the fusion's result, not as an all-reduce of the whole array."""
  reduced = [a for name in callees for i in (computations.get(name) or {}).values()
             if i.opcode in ("all-reduce", "all-reduce-start") for a in i.shapes]
  if not reduced:
    return False
  return sum(a.bytes for a in fusion.shapes) < sum(a.bytes for a in reduced)


def analyse(text: str) -> HloStats:
  """Per-device, per-step statistics of an optimised HLO module (see the module docstring)."""
  computations, entry = parse_module(text)
  collectives = collections.defaultdict(lambda: [0.0, 0.0])
  coll_ops, relayout_ops = {}, {}
  custom, kernels = collections.Counter(), collections.Counter()
  by_source = collections.Counter()
  totals = {"flops": 0.0, "dots": 0.0, "hbm": 0.0, "kernel_flops": 0.0}
  loops, unknown = [], []

  def add_op(table, kind, array, count):
    key = (kind, str(array))
    if key not in table:
      table[key] = OpTotal(kind, str(array), array.bytes)
    table[key].count += count

  def visit(name: str, mult: float, fused: bool, depth: int = 0, skip_collectives=False):
    comp = computations.get(name)
    if comp is None or depth > 64:
      return
    for instr in comp.values():
      op = instr.opcode
      if op.endswith("-done") or op == "async-update":
        continue
      kind = op[:-len("-start")] if op.endswith("-start") else op
      if kind in COLLECTIVE_KINDS and not skip_collectives:
        # An async start's result is (operands..., results..., [context]); count the result.
        arrays = instr.shapes
        if op.endswith("-start") and kind != "all-reduce":
          arrays = [a for a in arrays if a.dims]   # drop the scalar sync contexts
          arrays = arrays[len(arrays) // 2:]
        for a in arrays:
          add_op(coll_ops, kind, a, mult)
          collectives[kind][0] += a.bytes * mult
        collectives[kind][1] += mult
      elif op in ("dot", "convolution"):
        flops = _matmul_flops(comp, instr) * mult
        totals["flops"] += flops
        totals["dots"] += mult
        by_source[source_label(instr.attrs)] += flops
      elif op in RELAYOUT_OPS and instr.shapes:
        add_op(relayout_ops, op, instr.shapes[0], mult)
      elif op == "custom-call":
        target = re.search(r'custom_call_target="([^"]+)"', instr.attrs)
        custom[target.group(1) if target else "?"] += mult
        if target and target.group(1) == "tpu_custom_call":
          kernels[re.sub(r"\.\d+$", "", instr.name)] += mult
          cost = _kernel_cost(instr)
          totals["kernel_flops"] += cost.get("flops", _splash_flops(instr)) * mult
      if not fused and op not in _NO_TRAFFIC:
        totals["hbm"] += _hbm_bytes(computations, comp, instr) * mult
      if op == "while":
        trips = _trip_count(computations, comp, instr)
        if trips is None:
          unknown.append(instr.name)
          trips = 1
        loops.append((instr.name, trips, mult))
        for body in _called(instr, "body"):
          visit(body, mult * trips, fused, depth + 1)
        for cond in _called(instr, "condition"):
          visit(cond, mult * (trips + 1), fused, depth + 1)
      elif op in ("fusion",):
        callees = _called(instr, "calls")
        scattered = _reduce_scatter_fusion(computations, instr, callees)
        if scattered:
          for a in instr.shapes:
            add_op(coll_ops, "reduce-scatter", a, mult)
            collectives["reduce-scatter"][0] += a.bytes * mult
          collectives["reduce-scatter"][1] += mult
        for callee in callees:
          visit(callee, mult, True, depth + 1, skip_collectives=scattered)
      elif op in ("call", "async-start") or op.endswith("-start"):
        for callee in _called(instr, "to_apply") + _called(instr, "calls"):
          visit(callee, mult, fused, depth + 1)
      elif op == "conditional":
        # Which branch runs is data dependent: count each once (an upper bound).
        for key in ("branch_computations", "true_computation", "false_computation"):
          for callee in _called(instr, key):
            visit(callee, mult, fused, depth + 1)

  visit(entry, 1.0, False)
  relayout_bytes = {k: 0.0 for k in RELAYOUT_OPS}
  for o in relayout_ops.values():
    relayout_bytes[o.kind] += o.bytes
  by_size = lambda table: sorted(table.values(), key=lambda o: -o.bytes)
  return HloStats(
      collective_bytes={k: collectives[k][0] for k in COLLECTIVE_KINDS},
      collective_counts={k: collectives[k][1] for k in COLLECTIVE_KINDS},
      collective_ops=by_size(coll_ops), matmul_flops=totals["flops"], matmul_count=totals["dots"],
      matmul_flops_by_source=dict(by_source.most_common()),
      relayout_bytes=relayout_bytes, relayout_ops=by_size(relayout_ops),
      custom_calls=dict(custom), kernels=dict(kernels), kernel_flops=totals["kernel_flops"],
      hbm_bytes=totals["hbm"], loops=loops,
      unknown_trip_counts=unknown)


def summary_json(stats: HloStats, top: int = 5) -> str:
  return json.dumps(stats.to_json(top))
