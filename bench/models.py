"""The networks: one definition each, shared by every algorithm (PAPERS.md section 4).

Algorithms never call these modules' `forward` directly: they call
`torch.func.functional_call(model, params, x)` with explicit parameter dicts, so
that a meta-batch of tasks can be adapted in one `vmap` computation.

Batch norm keeps no running statistics (`track_running_stats=False`): it always
normalises with the current batch's statistics, in meta-training and at test, as
the paper's reference code does (its `training=True` everywhere). This is also
what makes the modules pure functions of (parameters, input).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from algorithms import onednn as onednn_products

from .config import Config
from .errors import ConfigError


def _glorot_(module: nn.Module) -> None:
    # The reference code's tf.layers defaults: Glorot-uniform kernels, zero biases.
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


SMALL_OUTPUT = 16
"""`Conv2d` computes outputs of at most this many positions per image as a matrix product
when compiled for the CPU (see there)."""

ONEDNN_OUTPUT = 196
"""The same in float32 where the product is oneDNN's (the Omniglot CNN's first
convolution has 14 x 14 outputs)."""


def conv_as_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   stride: tuple[int, int], padding: tuple[int, int],
                   default_order: bool | None = None) -> torch.Tensor:
    """F.conv2d(x, weight, bias, stride, padding) (groups 1, dilation 1) as one matrix
    product: every output position's input patch gathered by strided slices of the
    zero-padded input in channels-last order (im2col), times the weight flattened in the
    same order. Returns NCHW sizes with channels-last strides, or in the default order
    where `default_order` (by default off the CPU).

    On CUDA, batch norm cannot take channels-last strides under vmap ("NYI: querying
    is_contiguous inside of vmap", and in its backward "Tensor.clone(memory_format)
    inside vmap", torch 2.11), and evaluation adapts its tasks under vmap. There each
    image's product is the weight times its patches, (out, K) by (K, positions), whose
    result is the default order with no copy."""
    n, c, h, w = x.shape
    out_ch, _, kh, kw = weight.shape
    (sh, sw), (ph, pw) = stride, padding
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    padded = torch.nn.functional.pad(x.permute(0, 2, 3, 1), (0, 0, pw, pw, ph, ph))  # N, H, W, C
    taps = [padded[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] for i in range(kh) for j in range(kw)]
    kernel = weight.permute(0, 2, 3, 1).reshape(out_ch, kh * kw * c)
    if default_order is None:
        default_order = x.device.type != "cpu"
    if default_order:
        patches = torch.stack(taps, 3).reshape(n, oh * ow, kh * kw * c)
        y = kernel @ patches.transpose(1, 2)  # N, out, positions
        if bias is not None:
            y = y + bias[:, None]
        return y.view(n, out_ch, oh, ow)
    patches = torch.stack(taps, 3).reshape(n * oh * ow, kh * kw * c)
    y = patches @ kernel.t() if bias is None else torch.addmm(bias, patches, kernel.t())
    return y.view(n, oh, ow, out_ch).permute(0, 3, 1, 2)


class Conv2d(nn.Conv2d):
    """nn.Conv2d that, while torch.compile traces it for the CPU, computes its smaller
    outputs by `conv_as_matmul`. Inductor fuses the gathering of the patches into one
    kernel and calls one matrix product, forward and backward. oneDNN's convolution
    pays a fixed cost per call that dominates at these sizes.

    Which outputs count as small:

    - In float32, where oneDNN is built in, in code that computes one task
      (`algorithms.onednn.unbatched`: the compiled steps of the serial paths and of
      evaluation one task at a time): the strided convolutions' outputs of at most
      ONEDNN_OUTPUT positions per image, which is every convolution of the Omniglot CNN.
      Their products then run as oneDNN's inner product (`algorithms.onednn`), about
      twice MKL's rate on the 2-core AMD CPU.
      - The compiled channels-last Reptile meta-iteration ran 1.16x faster with two
        threads and 1.20x with one than with the rule below. That is medians of 20
        interleaved rounds.
      - Keeping oneDNN's convolution for the second layer made it 5% slower, and for
        the first, 4% slower.
      - A stride-1 convolution's patches are 9 times its input. The Mini-ImageNet CNN's
        fourth convolution (10 x 10 outputs) made its compiled step 2 to 3% slower as
        a product, so stride-1 convolutions keep the rule below.
    - Otherwise, outputs of at most SMALL_OUTPUT positions, where the product is MKL's.
      On a 2-core CPU (medians of 40 interleaved rounds, channels-last, batch 10), a
      compiled forward and backward of the Omniglot CNN's third convolution (7x7 -> 4x4)
      took 279 against 358 us, of its fourth (4x4 -> 2x2) 136 against 269 us; of its
      second (14x14 -> 7x7, 49 positions) 636 against 620 us, and of its first (one
      input channel, 196 positions) 265 against 210 us.

    The same numbers up to the order of a float sum.

    With `matmul` set (the `conv_matmul` setting, `build_model`), every output is computed
    by `conv_as_matmul`, eager or compiled, on any device."""

    matmul = False
    """Every convolution as a matrix product (cfg.conv_matmul)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._as_matmul(x):
            return conv_as_matmul(x, self.weight, self.bias, self.stride, self.padding)
        return super().forward(x)

    def _as_matmul(self, x: torch.Tensor) -> bool:
        if x.dim() != 4 or self.groups != 1 or self.dilation != (1, 1) or self.padding_mode != "zeros" \
                or isinstance(self.padding, str):
            return False
        if self.matmul:
            return True
        if not (torch.compiler.is_compiling() and x.device.type == "cpu"):
            return False
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        oh, ow = (x.shape[2] + 2 * ph - kh) // sh + 1, (x.shape[3] + 2 * pw - kw) // sw + 1
        onednn = x.dtype == torch.float32 and onednn_products.unbatched() and (sh, sw) != (1, 1)
        return oh * ow <= (ONEDNN_OUTPUT if onednn else SMALL_OUTPUT)


class OmniglotCNN(nn.Sequential):
    """4 x [3x3 conv, 64 filters, stride 2, padding 1, batch norm, ReLU], flatten, linear.

    28x28 -> 14 -> 7 -> 4 -> 2, so 64 * 2 * 2 = 256 features. The reference's TF 'same'
    padding pads 0 before and 1 after where PyTorch pads 1 on both sides: the shapes are
    the same, the kernels see the image shifted by one pixel.
    """

    def __init__(self, ways: int, channels: int = 64):
        layers: list[nn.Module] = []
        in_ch = 1
        for _ in range(4):
            layers += [
                Conv2d(in_ch, channels, 3, stride=2, padding=1),
                nn.BatchNorm2d(channels, track_running_stats=False),
                nn.ReLU(),
            ]
            in_ch = channels
        super().__init__(*layers, nn.Flatten(), nn.Linear(channels * 2 * 2, ways))
        _glorot_(self)


class MiniImageNetCNN(nn.Sequential):
    """4 x [3x3 conv, 32 filters, padding 1, batch norm, 2x2 max-pool, ReLU], flatten, linear.

    84x84 -> 42 -> 21 -> 11 -> 6 ('same' pooling rounds up, hence ceil_mode), so
    32 * 6 * 6 = 1152 features.
    """

    def __init__(self, ways: int, channels: int = 32):
        layers: list[nn.Module] = []
        in_ch = 3
        for _ in range(4):
            layers += [
                Conv2d(in_ch, channels, 3, padding=1),
                nn.BatchNorm2d(channels, track_running_stats=False),
                nn.MaxPool2d(2, ceil_mode=True),
                nn.ReLU(),
            ]
            in_ch = channels
        super().__init__(*layers, nn.Flatten(), nn.Linear(channels * 6 * 6, ways))
        _glorot_(self)


class SineMLP(nn.Sequential):
    """1-64-64-1 with tanh (the public Reptile example, PyTorch's default init) or ReLU."""

    def __init__(self, activation: str = "tanh", hidden: int = 64):
        act = {"tanh": nn.Tanh, "relu": nn.ReLU}[activation]
        super().__init__(nn.Linear(1, hidden), act(), nn.Linear(hidden, hidden), act(), nn.Linear(hidden, 1))


def build_model(cfg: Config) -> nn.Module:
    """The network for cfg.task, its convolution weights in channels-last order when
    cfg.channels_last, its convolutions matrix products when cfg.conv_matmul. Initialise
    the global torch seed first for reproducibility."""
    if cfg.task == "sine":
        return SineMLP(cfg.activation)
    model = (OmniglotCNN if cfg.task == "omniglot" else MiniImageNetCNN)(cfg.ways)
    for m in model.modules():
        if isinstance(m, Conv2d):
            m.matmul = cfg.conv_matmul
    return model.to(memory_format=memory_format(cfg))


@contextmanager
def convs_as_matmul(model: nn.Module, on: bool):
    """Within it (when `on`), every `Conv2d` of `model` computes as a matrix product, as
    cfg.conv_matmul makes it for a whole run: evaluation's convolutions with
    cfg.eval_matmul (`bench.evaluate`). Code compiled outside it keeps what it traced."""
    convs = [m for m in model.modules() if isinstance(m, Conv2d)]
    before = [m.matmul for m in convs]
    try:
        for m in convs:
            m.matmul = m.matmul or on
        yield
    finally:
        for m, was in zip(convs, before):
            m.matmul = was


def memory_format(cfg: Config) -> torch.memory_format:
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def check_layout(cfg: Config, device: torch.device, batch_seeds: bool = False) -> None:
    """channels_last = true runs on CUDA only where no tasks or seeds run under vmap: torch
    cannot differentiate a channels-last convolution under vmap on CUDA ("NYI:
    Tensor.clone(memory_format) inside vmap", torch 2.11). So on CUDA the serial paths
    only, and evaluation, which adapts its tasks under vmap, copies the weights into the
    default order there (`eval_layout`)."""
    if cfg.channels_last and device.type == "cuda" and (cfg.batched or batch_seeds):
        what = "--set batched=true" if cfg.batched else "--batch-seeds"
        raise ConfigError(f"channels_last=true with {what} is for the CPU: on CUDA torch cannot differentiate "
                          "channels-last convolutions under vmap: --set channels_last=false")


def eval_layout(cfg: Config, tensors: dict[str, torch.Tensor]) -> tuple[Config, dict[str, torch.Tensor]]:
    """The settings and tensors (weights, optimizer state) evaluation adapts its tasks with:
    on CUDA, in the default order where cfg.channels_last (see `check_layout`); else as
    they are."""
    first = next(iter(tensors.values()), None)
    if not cfg.channels_last or first is None or first.device.type != "cuda":
        return cfg, tensors
    cfg = cfg.replace(channels_last=False)
    return cfg, laid_out(tensors, cfg)


def laid_out(tensors: dict[str, torch.Tensor], cfg: Config) -> dict[str, torch.Tensor]:
    """`tensors` with the 4-D ones (convolution weights, their optimizer moments) in the
    memory order cfg.channels_last asks for: for tensors loaded from a checkpoint, which
    keep the order they were saved in."""
    return {k: v.contiguous(memory_format=memory_format(cfg)) if v.dim() == 4 else v for k, v in tensors.items()}


def _channels_last_images(x: torch.Tensor) -> torch.Tensor:
    """x (N, C, H, W) with channels-last strides, even where C == 1. There the default
    order is channels-last too, and `contiguous(memory_format=...)` leaves its strides as
    they are; but convolutions pick their output's order from the strides they see, so
    a one-channel image with default strides makes the first layer's output (and every
    later layer's input) NCHW again."""
    return x.permute(0, 2, 3, 1).clone(memory_format=torch.contiguous_format).permute(0, 3, 1, 2)


def set_precision(autocast: str, cudnn_benchmark: bool = False) -> None:
    """TensorFloat-32 on a GPU's convolutions and matrix products only when `autocast` is
    "tf32". PyTorch lets cuDNN use it by default, which rounds float32 convolutions to 10
    bits of mantissa: a GPU run would then differ from the CPU's, and from itself when
    another convolution algorithm is picked (a CUDA graph's, say), far beyond float
    rounding. cuDNN times its algorithms only with `cudnn_benchmark` (the setting). The
    flags are process-wide; every network the suite runs sets them through `forward`,
    and `bench speed` sets them for the peers' rows too."""
    tf32 = autocast == "tf32"
    if torch.backends.cudnn.allow_tf32 != tf32:
        torch.backends.cudnn.allow_tf32 = tf32
    if torch.backends.cuda.matmul.allow_tf32 != tf32:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    if torch.backends.cudnn.benchmark != cudnn_benchmark:
        torch.backends.cudnn.benchmark = cudnn_benchmark


def forward(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, cfg: Config) -> torch.Tensor:
    """The network's output for `x` with weights `params` (functional_call).

    With cfg.autocast == "bf16" the convolutions and linear layers compute in bfloat16
    (torch.autocast) and everything between them (batch norm, activations) in float32:
    the output is float32 either way. Batch norm stays in float32 because its statistics
    over a few examples are the precision-sensitive part, and because its backward under
    vmap refuses mixed precision. "tf32" and "off" differ only in `set_precision`'s flags.
    With cfg.channels_last, image batches go in channels-last order. The precision flags
    are set here, but not while torch.compile traces (the caller of compiled code sets
    them: `bench.runner._executed`)."""
    if not torch.compiler.is_compiling():
        set_precision(cfg.autocast, cfg.cudnn_benchmark)
    if cfg.channels_last and x.dim() == 4:
        x = _channels_last_images(x)
    if cfg.autocast != "bf16":
        return torch.func.functional_call(model, params, (x,))
    for name, layer in model.named_children():
        prefix = name + "."
        weights = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                x = torch.func.functional_call(layer, weights, (x,))
            x = x.float()
        else:
            x = torch.func.functional_call(layer, weights, (x,)) if weights else layer(x)
    return x


def task_loss(model: nn.Module, cfg: Config):
    """loss(params, x, y) for one task's batch: cross-entropy for classification, MSE for sine."""
    def loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = forward(model, params, x, cfg)
        if cfg.task == "sine":
            return torch.nn.functional.mse_loss(out, y)
        return torch.nn.functional.cross_entropy(out, y)
    return loss
