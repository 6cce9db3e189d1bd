"""Matrix products by oneDNN in the suite's compiled CPU code.

On the CPU, `torch.mm` runs MKL's sgemm, and on AMD processors MKL takes its 256-bit
AVX2 path. oneDNN's inner product is the kernel behind torch's oneDNN linear layers
(`mkldnn._linear_pointwise`), and it runs AVX-512 there. On the 2-core AMD EPYC with
one thread:

- 160 x 576 by 576 x 64, the Omniglot CNN's third convolution as a matrix product:
  60 against 113 us;
- 490 x 576 by 576 x 64, its second: 157 against 349 us.

oneDNN pays a fixed cost of about 11 us a call. So a 10 x 256 by 256 x 5 product, the
classifier's, takes 11.5 us against MKL's 1.8.

Compiled code for the CPU (`algorithms.inner.compile_fn`) hands every float32 matrix
product of at least `MIN_PRODUCT` multiply-adds to oneDNN, in the forward and backward
computations alike. Since that happens after autograd, differentiation never sees it:

1. A graph pass (`OneDnnProducts`, Inductor's post-grad custom pass) replaces
   `aten.mm` and `aten.addmm` with `bench::onednn_linear`. The pass's uuid enters
   torch's compile-cache keys.
2. Inductor lowers that operator to a direct call of oneDNN's kernel from its
   generated C++.

Results equal torch.mm's up to the order of float sums. Float64 products, which oneDNN
does not compute, stay with MKL, and so do products on other devices.

Only code that computes one task is traced with convolutions as matrix products for
oneDNN (`one_task`, `unbatched`). Under `vmap`, with weights that differ per task, those
products are batched ones. oneDNN's inner product does not take those, and MKL's
batched product is slower there than oneDNN's grouped convolutions.
"""

from __future__ import annotations

import torch
from torch import Tensor

MIN_PRODUCT = 1 << 20
"""The smallest product (m * k * n multiply-adds) handed to oneDNN. The break-even point
on the 2-core CPU was about 0.8 M with one thread and 2 to 4 M with two. At this size,
each convolution of the Omniglot CNN goes to oneDNN, forward and backward, and the
classifier's products stay with MKL. In whole compiled Reptile steps
(`bench.models.Conv2d`) this cut ran as fast as 2^19 and faster than 2^21."""

AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
"""Whether this torch has oneDNN's inner product (x86 and ARM builds do)."""

_PASS = None
_ONE_TASK = False


def one_task(fn):
    """fn, compiled code's caller, marking its traces as those of one task's computation,
    outside every `vmap` (the serial paths' steps and tasks, evaluation one task at a
    time): `unbatched` is True while fn runs."""
    def call(*args):
        global _ONE_TASK
        before, _ONE_TASK = _ONE_TASK, True
        try:
            return fn(*args)
        finally:
            _ONE_TASK = before
    return call


def unbatched() -> bool:
    """Whether the code being traced computes one task (`one_task`) and oneDNN is here:
    whether `bench.models.Conv2d` may compute its convolutions as products for oneDNN.
    A module-level value, read while torch.compile traces."""
    return _ONE_TASK and AVAILABLE


def inductor_options() -> dict:
    """Inductor settings that send compiled CPU code's large products to oneDNN (empty
    where this torch lacks oneDNN or Inductor's custom passes)."""
    global _PASS
    if not AVAILABLE:
        return {}
    if _PASS is None:
        try:
            _PASS = _make_pass()
        except (ImportError, AttributeError):  # a torch without custom post-grad passes
            return {}
    return {"post_grad_custom_post_pass": _PASS}


def _make_pass():
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files
    from torch._inductor.lowering import fallback_handler, register_lowering

    if not hasattr(torch.ops.bench, "onednn_linear"):
        @torch.library.custom_op("bench::onednn_linear", mutates_args=())
        def onednn_linear(a: Tensor, w: Tensor) -> Tensor:
            """a @ w.T by oneDNN's inner product (what compiled code runs: below)."""
            return torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], "")

        @onednn_linear.register_fake
        def _(a: Tensor, w: Tensor) -> Tensor:
            return a.new_empty(a.shape[0], w.shape[0])

        # Inductor would call the operator above through the dispatcher, in Python; this
        # calls oneDNN's kernel straight from the generated code instead
        kernel = fallback_handler(torch.ops.mkldnn._linear_pointwise.default, add_to_fallback_set=False)
        register_lowering(torch.ops.bench.onednn_linear.default)(lambda a, w: kernel(a, w, None, "none", [], ""))

    class OneDnnProducts(CustomGraphPass):
        """Each float32 CPU `mm(a, b)` and `addmm(bias, a, b)` (alpha = beta = 1) of at
        least MIN_PRODUCT multiply-adds becomes `onednn_linear(a, b.T)`, plus the bias.

        - The bias is added outside oneDNN, which reads a broadcast bias wrongly. Inductor
          fuses that addition into the kernel after it.
        - A transposed `a` (a weight gradient's output gradient) is copied in row order by
          Inductor's code, which often fuses the copy into the kernel that makes `a`.
          oneDNN would otherwise copy it through torch's slower copy, about 20 us a call.
          On the Omniglot CNN's compiled Reptile step this ran 1.03x faster with one
          thread and 1.05x with two. Copying `b` too ran slower: oneDNN reads a
          transposed weight as it is."""

        def __call__(self, graph: torch.fx.Graph) -> None:
            aten = torch.ops.aten
            for node in list(graph.nodes):
                if node.op != "call_function" or node.target not in (aten.mm.default, aten.addmm.default):
                    continue
                if node.target is aten.addmm.default:
                    if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
                        continue
                    bias, a, b = node.args[:3]
                else:
                    (a, b), bias = node.args[:2], None
                if not _wanted(a, b, node):
                    continue
                with graph.inserting_before(node):
                    if not a.meta["val"].is_contiguous():
                        a_val = a.meta["val"]
                        a = graph.call_function(aten.clone.default, (a,), {"memory_format": torch.contiguous_format})
                        a.meta["val"] = a_val.clone(memory_format=torch.contiguous_format)
                    w = graph.call_function(aten.permute.default, (b, [1, 0]))
                    w.meta["val"] = b.meta["val"].permute(1, 0)
                    new = graph.call_function(torch.ops.bench.onednn_linear.default, (a, w))
                    new.meta.update(node.meta)
                    if bias is not None:
                        new = graph.call_function(aten.add.Tensor, (new, bias))
                        new.meta.update(node.meta)
                node.replace_all_uses_with(new)
                graph.erase_node(node)

        def uuid(self):
            return get_hash_for_files((__file__,)), MIN_PRODUCT

    return OneDnnProducts()


def _wanted(a, b, node) -> bool:
    """Whether node's product a @ b goes to oneDNN: float32, on the CPU, large enough."""
    vals = [getattr(x, "meta", {}).get("val") for x in (a, b, node)]
    if any(not isinstance(v, Tensor) or v.dtype != torch.float32 or v.device.type != "cpu" or v.dim() != 2
           for v in vals):
        return False
    (m, k), n = vals[0].shape, vals[1].shape[1]
    return m * k * n >= MIN_PRODUCT
