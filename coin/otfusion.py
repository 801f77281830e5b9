"""OT fusion (Singh & Jaggi, "Model Fusion via Optimal Transport"): align neurons, then average.

Two networks of one architecture can compute the same function with their hidden neurons (channels) in a
different order, so averaging their parameters entry by entry mixes unrelated neurons. Here model B is
re-ordered to match a reference A layer by layer: for each group of output channels a transport map between
A's and B's neurons is computed from a ground metric (incoming weights, or activations on a batch) with exact
OT (``ot.emd``, a permutation when widths are equal) or entropic OT (``ot.sinkhorn``), B's parameters are
moved accordingly (outputs of the producing layer, its bias and BatchNorm, inputs of every consumer), and the
aligned B is averaged with A.

Which channels must share one map is read from the ``torch.fx`` graph of the model, not from module names:
a *channel space* starts at each Linear / Conv output, passes through per-channel ops (BatchNorm, ReLU and
friends, pooling, dropout, flatten), and spaces joined by ``+`` / ``-`` (residual sums) are merged, so a
residual block's output uses the same map as its shortcut. The network input, the network output (labels)
and anything flowing through an op this module does not understand are *fixed* (identity map), which keeps
the aligned copy's function exactly that of B. Parameterized modules other than Linear / Conv1d / Conv2d
(groups = 1) / BatchNorm, weight sharing, and parameters used outside a module raise ``CodingError``.
Channels are at dim 1 (images N×C×H×W, vectors N×C); flattening after a conv is handled (the next Linear sees
channel blocks of size H·W).
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import ot
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from coin.errors import CodingError
from coin.params import build_coded, check_beta, check_experts, merge_buffers, params_of, weighted_average

Metric = Literal["weight", "activation"]
Solver = Literal["emd", "sinkhorn"]

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_CHANNELWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardtanh,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)
_CHANNELWISE_FUNCTIONS = {
    torch.relu, F.relu, F.relu6, F.gelu, F.silu, F.elu, F.leaky_relu, F.hardswish, torch.sigmoid, torch.tanh,
    F.dropout, F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
}
_CHANNELWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "detach"}
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish)
_ACTIVATION_FUNCTIONS = {torch.relu, F.relu, F.relu6, F.gelu, F.silu, F.elu, F.leaky_relu, torch.sigmoid, torch.tanh}
_SUMS = {operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub}
_SCALAR_OPS = {operator.mul, operator.imul, operator.truediv, operator.itruediv, torch.mul, torch.div}


# ---------------------------------------------------------------------------------------------- graph analysis


@dataclass
class ChannelSpace:
    """Channels that must be re-ordered together: outputs of ``producers`` (in forward order), the
    BatchNorms ``norms`` acting on them, and inputs of ``consumers`` (module, block size; block > 1 when a
    conv's output was flattened before a Linear). ``act_nodes`` are the graph nodes whose outputs feed the
    activation metric: the producers' outputs (pre-activations, which also tell dead ReLU units apart) and the
    activation functions' outputs on these channels; ``fixed`` spaces keep the identity map."""

    producers: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    consumers: list[tuple[str, bool]] = field(default_factory=list)
    act_nodes: list[str] = field(default_factory=list)
    fixed: bool = False
    width: int = 0
    order: int = 0

    @property
    def name(self) -> str:
        return "+".join(self.producers) if self.producers else "<fixed>"


@dataclass
class AlignmentPlan:
    """The traced graph and its channel spaces in the order they are aligned."""

    graph: fx.Graph
    spaces: list[ChannelSpace]
    input_space: dict[str, ChannelSpace]  # weighted module → space of its input
    blocks: dict[str, int]  # consumer module → channel block size of its input (1 unless flattened)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []
        self.fixed: list[bool] = []

    def new(self, fixed: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.fixed.append(fixed)
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> int:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[rj] = ri
            self.fixed[ri] = self.fixed[ri] or self.fixed[rj]
        return ri

    def fix(self, i: int) -> None:
        self.fixed[self.find(i)] = True


def _is_flatten(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        m = modules[node.target]
        return isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1
    if node.op == "call_function" and node.target is torch.flatten:
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return start == 1 and end == -1
    return False


def plan_alignment(model: nn.Module) -> AlignmentPlan:
    """Trace ``model`` with torch.fx and group its channels into spaces (see the module docstring)."""
    try:
        graph = fx.Tracer().trace(model)
    except Exception as error:  # noqa: BLE001 - any tracing failure means the graph cannot be read
        raise CodingError(f"OT alignment needs a torch.fx-traceable model: {type(error).__name__}: {error}") from None
    modules = dict(model.named_modules())
    owned = {f"{m}.{p}" if m else p for m, mod in modules.items() for p, _ in mod.named_parameters(recurse=False)}
    for m, mod in modules.items():
        if any(True for _ in mod.parameters(recurse=False)) and not isinstance(mod, _WEIGHTED + _NORMS):
            raise CodingError(f"OT alignment does not support parameterized module '{m}' ({type(mod).__name__})")
        if isinstance(mod, nn.Conv1d | nn.Conv2d) and mod.groups != 1:
            raise CodingError(f"OT alignment does not support grouped convolution '{m}' (groups={mod.groups})")
    uf = _UnionFind()
    form: dict[fx.Node, tuple[int, bool]] = {}  # node → (space id, flattened)
    producer_of: dict[str, int] = {}
    input_of: dict[str, tuple[int, bool]] = {}
    norm_of: dict[str, tuple[int, bool]] = {}
    act: list[tuple[fx.Node, int, bool]] = []
    called: set[str] = set()
    order: dict[int, int] = {}

    def opaque(node: fx.Node) -> None:
        for arg in node.all_input_nodes:
            if arg in form:
                uf.fix(form[arg][0])
        form[node] = (uf.new(fixed=True), False)

    for idx, node in enumerate(graph.nodes):
        tensor_args = [a for a in node.all_input_nodes if a in form]
        if node.op == "placeholder":
            form[node] = (uf.new(fixed=True), False)
        elif node.op == "get_attr":
            if str(node.target) in owned or any(str(node.target).startswith(f"{p}.") for p in owned):
                raise CodingError(f"OT alignment does not support parameter '{node.target}' used outside its module")
            form[node] = (uf.new(fixed=True), False)
        elif node.op == "output":
            for arg in tensor_args:
                uf.fix(form[arg][0])
        elif node.op == "call_module":
            mod = modules[node.target]
            name = str(node.target)
            if isinstance(mod, _WEIGHTED):
                if name in called:
                    raise CodingError(f"OT alignment does not support weight sharing: '{name}' is called twice")
                called.add(name)
                if len(tensor_args) != 1:
                    raise CodingError(f"module '{name}' must take exactly one tensor")
                src = form[tensor_args[0]]
                if src[1] and not isinstance(mod, nn.Linear):
                    raise CodingError(f"convolution '{name}' reads a flattened tensor")
                input_of[name] = src
                sid = uf.new()
                producer_of[name] = sid
                order[sid] = idx
                form[node] = (sid, False)
                act.append((node, sid, False))
            elif isinstance(mod, _NORMS):
                src = form[tensor_args[0]]
                norm_of[str(node.target)] = src
                form[node] = src
            elif isinstance(mod, _CHANNELWISE_MODULES) and len(tensor_args) == 1:
                form[node] = form[tensor_args[0]]
                if isinstance(mod, _ACTIVATIONS):
                    act.append((node, *form[node]))
            elif _is_flatten(node, modules):
                form[node] = (form[tensor_args[0]][0], True)
            else:
                opaque(node)
        elif node.op in ("call_function", "call_method"):
            fn = node.target
            if node.op == "call_method" and fn in ("size", "dim"):
                continue  # not a tensor
            if not tensor_args:
                continue
            if node.op == "call_method":
                channelwise = fn in _CHANNELWISE_METHODS
                is_sum = fn in ("add", "add_", "sub", "sub_")
                scalar = fn in ("mul", "mul_", "div", "div_")
            else:
                channelwise = fn in _CHANNELWISE_FUNCTIONS
                is_sum = fn in _SUMS
                scalar = fn in _SCALAR_OPS
            if channelwise and len(tensor_args) == 1:
                form[node] = form[tensor_args[0]]
                if fn in _ACTIVATION_FUNCTIONS or fn in ("relu", "relu_"):
                    act.append((node, *form[node]))
            elif _is_flatten(node, modules) and len(tensor_args) == 1:
                form[node] = (form[tensor_args[0]][0], True)
            elif (is_sum or scalar) and len(tensor_args) == 1:
                form[node] = form[tensor_args[0]]  # tensor ∘ scalar
            elif is_sum and len(tensor_args) == 2 and form[tensor_args[0]][1] == form[tensor_args[1]][1]:
                form[node] = (uf.union(form[tensor_args[0]][0], form[tensor_args[1]][0]), form[tensor_args[0]][1])
            else:
                opaque(node)

    spaces: dict[int, ChannelSpace] = {}

    def space(sid: int) -> ChannelSpace:
        root = uf.find(sid)
        if root not in spaces:
            spaces[root] = ChannelSpace(fixed=uf.fixed[root], order=math.inf)
        return spaces[root]

    for name, sid in producer_of.items():
        s = space(sid)
        s.producers.append(name)
        s.order = min(s.order, order[sid])
        out = modules[name].out_channels if isinstance(modules[name], nn.Conv1d | nn.Conv2d) else \
            modules[name].out_features
        if s.width and s.width != out:
            raise CodingError(f"layers summed together have different widths: {s.producers}")
        s.width = out
    for s in spaces.values():
        s.producers.sort(key=lambda n: order[producer_of[n]])
    input_space: dict[str, ChannelSpace] = {}
    blocks: dict[str, int] = {}
    for name, (sid, flat) in input_of.items():
        s = space(sid)
        input_space[name] = s
        mod = modules[name]
        n_in = mod.in_features if isinstance(mod, nn.Linear) else mod.in_channels
        blocks[name] = 1
        if not s.fixed:
            if n_in % s.width:
                raise CodingError(f"'{name}' has {n_in} inputs, not a multiple of {s.width} channels")
            if n_in != s.width and not flat:
                raise CodingError(f"'{name}' has {n_in} inputs but its input has {s.width} channels")
            blocks[name] = n_in // s.width
            s.consumers.append((name, flat))
    for name, (sid, _flat) in norm_of.items():
        s = space(sid)
        if not s.fixed:
            if modules[name].num_features != s.width:
                raise CodingError(f"BatchNorm '{name}' does not match the {s.width} channels it normalizes")
            s.norms.append(name)
    for node, sid, flat in act:
        if not flat:
            space(sid).act_nodes.append(node.name)
    live = sorted((s for s in spaces.values() if not s.fixed and s.producers), key=lambda s: s.order)
    return AlignmentPlan(graph, live, input_space, blocks)


# ------------------------------------------------------------------------------------------------ transports


@dataclass
class SpaceMap:
    """The map of one channel space: ``rows`` is the transport plan normalized so each of A's neurons is a
    convex combination of B's (a permutation matrix for exact OT at equal widths), ``perm`` its index form."""

    name: str
    rows: Tensor
    perm: Tensor | None
    cost: float
    identity_fraction: float


@dataclass
class Alignment:
    """B re-ordered to match the reference: ``model`` computes B's function when every map is a permutation."""

    model: nn.Module
    maps: list[SpaceMap]

    @property
    def is_permutation(self) -> bool:
        return all(m.perm is not None for m in self.maps)

    @property
    def identity_fraction(self) -> float:
        """Share of all aligned neurons mapped to themselves (1.0: alignment changed nothing)."""
        n = sum(m.rows.shape[0] for m in self.maps)
        return sum(m.identity_fraction * m.rows.shape[0] for m in self.maps) / n if n else 1.0


def transport(cost: np.ndarray, solver: Solver = "emd", reg: float = 0.01) -> np.ndarray:
    """OT plan between uniform measures on A's (rows) and B's (columns) neurons for a cost matrix. Sinkhorn
    runs on the cost divided by its largest entry so ``reg`` does not depend on the weights' scale."""
    n, m = cost.shape
    a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    if solver == "emd":
        return ot.emd(a, b, cost)
    if solver == "sinkhorn":
        if reg <= 0:
            raise CodingError(f"Sinkhorn needs reg > 0, got {reg}")
        scale = float(cost.max()) if cost.size and cost.max() > 0 else 1.0
        return ot.sinkhorn(a, b, cost / scale, reg, method="sinkhorn_log", numItermax=5000, stopThr=1e-12,
                           warn=False)
    raise CodingError(f"unknown OT solver '{solver}'; choose emd or sinkhorn")


def _space_map(name: str, plan: np.ndarray, cost: np.ndarray) -> SpaceMap:
    rows = plan / np.maximum(plan.sum(1, keepdims=True), np.finfo(np.float64).tiny)
    n, m = rows.shape
    hits = np.isclose(rows, 1.0, rtol=0, atol=1e-9)
    perm = None
    if n == m and bool((hits.sum(1) == 1).all()) and bool((hits.sum(0) == 1).all()):
        perm = torch.as_tensor(hits.argmax(1), dtype=torch.long)
    ident = float(np.trace(rows[:, :n]) / n) if n <= m else float(np.trace(rows[:m]) / n)
    return SpaceMap(name, torch.as_tensor(rows), perm, float((plan * cost).sum()), ident)


def _apply(t: Tensor, smap: SpaceMap, dim: int, block: int = 1) -> Tensor:
    """Re-order (or mix) the channels of ``t`` along ``dim``, where that dim holds channel blocks of ``block``."""
    shape = t.shape
    c = smap.rows.shape[1]
    v = t.reshape(*shape[:dim], c, block, *shape[dim + 1:]) if block > 1 else t
    if smap.perm is not None:
        v = v.index_select(dim, smap.perm.to(t.device))
    else:
        v = torch.movedim(torch.tensordot(smap.rows.to(t), v, dims=([1], [dim])), 0, dim)
    return v.reshape(*shape[:dim], -1, *shape[dim + 1:]) if block > 1 else v


def _activations(model: nn.Module, graph: fx.Graph, x: Tensor, names: set[str]) -> dict[str, Tensor]:
    """Outputs of the named graph nodes on ``x`` as (channels × features) matrices."""
    gm = fx.GraphModule(model, copy.deepcopy(graph))
    found: dict[str, Tensor] = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            if n.name in names and isinstance(out, Tensor) and out.ndim >= 2:
                found[n.name] = out.detach().movedim(1, 0).reshape(out.shape[1], -1)
            return out

    was_training = model.training
    model.eval()
    with torch.no_grad():
        _Recorder(gm).run(x)
    model.train(was_training)
    return found


def _weight_rows(state: dict[str, Tensor], module: str) -> Tensor:
    w = state[f"{module}.weight"]
    rows = w.reshape(w.shape[0], -1)
    bias = state.get(f"{module}.bias")
    return rows if bias is None else torch.cat([rows, bias[:, None]], dim=1)


def align(
    reference: nn.Module,
    model: nn.Module,
    *,
    metric: Metric = "weight",
    solver: Solver = "emd",
    reg: float = 0.01,
    x: Tensor | None = None,
    plan: AlignmentPlan | None = None,
) -> Alignment:
    """Re-order ``model``'s neurons to match ``reference`` (same architecture), space by space in forward order.

    Weight metric: Euclidean distance between incoming weight rows (bias appended), B's inputs already mapped
    by the previous spaces; only producers whose inputs are mapped count (a residual stream is matched on its
    first layer). Activation metric: distance between each channel's values on ``x`` (all samples and
    positions, before and after the activation function, see ``ChannelSpace``). The output layer and anything
    fixed by the plan keep their order.
    """
    check_experts([reference, model])
    if metric not in ("weight", "activation"):
        raise CodingError(f"unknown OT ground metric '{metric}'; choose weight or activation")
    if metric == "activation" and (x is None or x.shape[0] < 1):
        raise CodingError("the activation ground metric needs a batch of inputs x")
    if solver not in ("emd", "sinkhorn"):
        raise CodingError(f"unknown OT solver '{solver}'; choose emd or sinkhorn")
    plan = plan or plan_alignment(reference)
    ref_state = {k: v.detach() for k, v in reference.state_dict().items()}
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    acts_a: dict[str, Tensor] = {}
    acts_b: dict[str, Tensor] = {}
    if metric == "activation":
        wanted = {n for s in plan.spaces for n in s.act_nodes}
        xd = x.to(next(reference.parameters()).device)
        acts_a = _activations(reference, plan.graph, xd, wanted)
        acts_b = _activations(model, plan.graph, xd.to(next(model.parameters()).device), wanted)
    done: set[int] = set()
    maps: list[SpaceMap] = []
    for s in plan.spaces:
        if metric == "weight":
            usable = [p for p in s.producers if plan.input_space[p].fixed or id(plan.input_space[p]) in done]
            fa = torch.cat([_weight_rows(ref_state, p) for p in usable], dim=1)
            fb = torch.cat([_weight_rows(state, p) for p in usable], dim=1)
        else:
            sites = [n for n in s.act_nodes if n in acts_a]
            fa = torch.cat([acts_a[n] for n in sites], dim=1)
            fb = torch.cat([acts_b[n] for n in sites], dim=1)
        cost = torch.cdist(fa.double().cpu(), fb.double().cpu()).numpy()
        smap = _space_map(s.name, transport(cost, solver, reg), cost)
        maps.append(smap)
        for p in s.producers:
            for suffix in ("weight", "bias"):
                key = f"{p}.{suffix}"
                if state.get(key) is not None:
                    state[key] = _apply(state[key], smap, 0)
        for nm in s.norms:
            for suffix in ("weight", "bias", "running_mean", "running_var"):
                key = f"{nm}.{suffix}"
                if state.get(key) is not None:
                    state[key] = _apply(state[key], smap, 0)
        for c, _flat in s.consumers:
            key = f"{c}.weight"
            state[key] = _apply(state[key], smap, 1, plan.blocks[c])
        done.add(id(s))
    aligned = copy.deepcopy(model)
    aligned.load_state_dict(state)
    return Alignment(aligned.train(model.training), maps)


def align_all(
    models: Sequence[nn.Module],
    *,
    metric: Metric = "weight",
    solver: Solver = "emd",
    reg: float = 0.01,
    x: Tensor | None = None,
) -> list[Alignment]:
    """Align every model to ``models[0]`` (which is returned unchanged, with an empty map list)."""
    check_experts(list(models))
    plan = plan_alignment(models[0])
    out = [Alignment(models[0], [])]
    for m in models[1:]:
        out.append(align(models[0], m, metric=metric, solver=solver, reg=reg, x=x, plan=plan))
    return out


@dataclass
class Fusion:
    """The fused model, the aligned models it averaged (reference first) and their alignments."""

    model: nn.Module
    alignments: list[Alignment]

    @property
    def aligned(self) -> list[nn.Module]:
        return [a.model for a in self.alignments]


def fuse(
    models: Sequence[nn.Module],
    beta: Sequence[float] | Tensor,
    *,
    metric: Metric = "weight",
    solver: Solver = "emd",
    reg: float = 0.01,
    x: Tensor | None = None,
) -> Fusion:
    """OT fusion: align all models to ``models[0]``, then β-average parameters (buffers: ``merge_buffers``)."""
    b = check_beta(beta, len(models))
    alignments = align_all(models, metric=metric, solver=solver, reg=reg, x=x)
    aligned = [a.model for a in alignments]
    merged = weighted_average([params_of(m) for m in aligned], b)
    return Fusion(build_coded(aligned[0], merged, merge_buffers(aligned, b)), alignments)
