"""Speed-ups of the training passes that leave the model's code and its results alone.

Each is a context manager that undoes itself; :class:`TrainingSpeedups` decides which a run uses and
applies them together (``with training_speedups(model, config) as fast:``), and can suspend the ones
that change precision or the call path for a float32, eager validation pass (``with fast.suspended():``).
The measurements behind them are in ``docs/history/performance.md``.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager

import torch

#: ``compile="auto"`` compiles runs of at least this many steps, where the one-off compile pays for itself
#: even with a cold TorchInductor cache (``benchmarks/compiled_blocks.py``; docs/calibration.md).
COMPILE_MIN_STEPS = 200
#: ... and models at least this wide (``d_model``): below it a step costs milliseconds and the compile tens of seconds
#: (a 4-layer tracr model: 36 s compiled, 2 s eager, for 240 steps).
COMPILE_MIN_WIDTH = 128
_AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": None}


@contextmanager
def frozen_weights(model):
    """``requires_grad=False`` on every model parameter inside the ``with``; the flags are put back on exit.

    Only gates (or mask leaves) train; the model's weights must not collect gradients.
    """
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


# Storage orders that make TransformerLens' per-pass rearrangement of a weight a free view:
# (permutation to store contiguously, permutation back to the parameter's shape).
_T2 = ((1, 0), (1, 0))  # W.T.contiguous() of a [in, out] matrix
_W_O = ((2, 0, 1), (1, 2, 0))  # rearrange(W_O, "h d m -> m (h d)").contiguous()
_W_QKV = ((0, 2, 1), (0, 2, 1))  # rearrange(W, "h m d -> (h d) m") in simple_attn_linear


def _transposed_weights(model) -> list[tuple[torch.nn.Parameter, tuple, tuple]]:
    """The weights a HookedTransformer forward copies, each with its fast storage order: ``W_U``
    (``W_U.T.contiguous()`` in the unembed), ``W_O`` and ``W_Q``/``W_K``/``W_V`` (``_W_K``/``_W_V``
    with grouped-query attention) in attention, and ``W_gate``, ``W_in``, ``W_out`` of a gated MLP."""
    from transformer_lens.components.mlps.gated_mlp import GatedMLP

    found = []

    def add(p, layout):
        if isinstance(p, torch.nn.Parameter) and p.dim() == len(layout[0]):
            found.append((p, *layout))

    add(getattr(getattr(model, "unembed", None), "W_U", None), _T2)
    for block in getattr(model, "blocks", []):
        attn = getattr(block, "attn", None)
        add(getattr(attn, "W_O", None), _W_O)
        for name in ("W_Q", "W_K", "W_V", "_W_K", "_W_V"):
            if name in getattr(attn, "_parameters", {}):  # the stored ones, not GQA's expanding properties
                add(attn._parameters[name], _W_QKV)
        mlp = getattr(block, "mlp", None)
        if type(mlp) is GatedMLP:
            for name in ("W_gate", "W_in", "W_out"):
                add(getattr(mlp, name, None), _T2)
    return found


def fast_weight_layout(model) -> int:
    """Store the weights that a ``HookedTransformer`` copies on every pass in the copy's layout.

    TransformerLens computes e.g. ``F.linear(x, W_U.T.contiguous())``: for a row-major ``W_U``
    that is a full transposed copy of the weight on every forward pass (on SmolLM2: 28 M
    unembedding floats, plus the three MLP matrices, ``W_O`` and ``W_Q``/``W_K``/``W_V`` of
    every layer), about a fifth of a discovery step on a CPU. Re-storing each such weight so
    that the rearranged view is already contiguous makes those copies no-ops. Values, shapes and
    results are unchanged (the matmuls see the same contiguous operand as before); only the
    memory order differs. In place (the same ``Parameter`` objects get new storage) and
    idempotent. The re-stored parameters are not contiguous, so saving a state dict with
    safetensors needs ``.contiguous()`` on each tensor.

    Args:
        model: a ``HookedTransformer``; other models are left alone.

    Returns:
        the number of weights re-stored by this call.
    """
    if type(model).__name__ != "HookedTransformer":
        return 0
    changed = 0
    for p, store, back in _transposed_weights(model):
        if p.data.permute(*store).is_contiguous():
            continue
        p.data = p.data.permute(*store).contiguous().permute(*back)
        changed += 1
    return changed


@contextmanager
def fast_layout(model):
    """:func:`fast_weight_layout` for the ``with``; the weights it re-stored go back to their row-major order on
    exit, so the caller's model leaves as it came (a model from ``load_model`` already has the fast layout)."""
    changed = []
    if type(model).__name__ == "HookedTransformer":
        changed = [p for p, store, _ in _transposed_weights(model) if not p.data.permute(*store).is_contiguous()]
    fast_weight_layout(model)
    try:
        yield
    finally:
        for p in changed:
            p.data = p.data.contiguous()


#: Weights a HookedTransformer forward uses only as matrix-product operands (never in a norm, an
#: embedding lookup or an addition), so ``torch.autocast`` casts each of them on every pass.
MATMUL_WEIGHTS = ("W_Q", "W_K", "W_V", "_W_K", "_W_V", "W_O", "W_in", "W_gate", "W_out", "W_U")


@contextmanager
def precast_weights(model, dtype: torch.dtype | None):
    """Inside the ``with``, the matrix-product weights of ``model`` are copies in the autocast ``dtype``.

    Under ``torch.autocast`` every matrix product casts its float32 weight to the low precision on
    every pass (the weights are frozen, so autocast does not cache the cast), and with micro-batches
    once per micro-batch. Casting each weight once, with the same rounding and the same memory layout,
    gives bit-identical results inside autocast (``benchmarks/precast_weights.py``). Norm weights,
    biases and embeddings keep their precision, so only autocast-ed operations see the copies; outside
    autocast the copies would be a dtype mismatch, so leave the ``with`` before any float32 pass. The
    original tensors are put back on exit.

    Args:
        model: a ``HookedTransformer``; other models, float weights already in ``dtype``, and
            ``dtype=None`` (no autocast) are left alone.
        dtype: the autocast dtype (``torch.bfloat16`` or ``torch.float16``), or None.

    Yields:
        the number of weights swapped.
    """
    swapped: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    if dtype is not None and type(model).__name__ == "HookedTransformer":
        for name, p in model.named_parameters():
            if name.rsplit(".", 1)[-1] in MATMUL_WEIGHTS and p.dtype != dtype and p.is_floating_point():
                swapped.append((p, p.data))
                p.data = p.data.to(dtype)  # preserve_format: same strides (fast_weight_layout survives)
    try:
        yield len(swapped)
    finally:
        while swapped:
            p, original = swapped.pop()
            p.data = original


@contextmanager
def compiled_blocks(model):
    """Inside the ``with``, the blocks of a ``HookedTransformer`` after the first run under ``torch.compile``.

    All compiled blocks share one graph (forward and backward), with dynamic batch and sequence
    sizes, so the compile cost is paid once per process; the first block stays eager because it alone
    holds the embedding gate's hook. Hooks must be ``Interpolator(shared_hooks=True)``'s: per-site hook
    functions would specialise the graph to each layer. Values are those of the eager blocks up to
    floating-point rounding (fused element-wise kernels). Each block's previous call path is put back
    on exit.
    """
    blocks = list(getattr(model, "blocks", []))[1:]
    before = [b._compiled_call_impl for b in blocks]
    for b in blocks:
        b.compile(dynamic=True)
    try:
        yield
    finally:
        for b, previous in zip(blocks, before):
            b._compiled_call_impl = previous


def bf16_is_fast(device: torch.device) -> bool:
    """Whether ``device`` has native bfloat16 matrix multiplication (CUDA with bf16, or a CPU with AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def autocast_dtype(speed, device: torch.device, model_dtype: torch.dtype) -> torch.dtype | None:
    """The dtype the gated training passes autocast to under ``speed.autocast`` (a
    :class:`~mgnp_lens.config.SpeedSettings` or a ``PruningConfig``), or None for the model's own.

    ``"auto"`` picks bfloat16 when the model is float32 and the device multiplies in bfloat16 natively.
    """
    if speed.autocast == "auto":
        return torch.bfloat16 if model_dtype == torch.float32 and bf16_is_fast(device) else None
    return _AUTOCAST_DTYPES[speed.autocast]


def compile_backend_missing(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot build kernels for ``device`` here (None: it can)."""
    if device.type == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler

            get_cpp_compiler()
        except Exception as e:  # no C++ compiler (or an unusable one): TorchInductor's CPU backend needs it
            return f"TorchInductor found no usable C++ compiler ({e})"
        return None
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "TorchInductor needs Triton for CUDA, and it is not installed"
    return f"no TorchInductor backend is set up for device {device.type!r}"


def use_compile(speed, model, device: torch.device, steps: int) -> bool:
    """Whether the training passes of a ``steps``-step run run through :func:`compiled_blocks` under
    ``speed.compile`` (a :class:`~mgnp_lens.config.SpeedSettings` or a ``PruningConfig``).

    ``"auto"``: a dense ``HookedTransformer`` with at least two blocks and ``d_model`` of at least
    :data:`COMPILE_MIN_WIDTH`, a device TorchInductor can build for, and a run of at least
    :data:`COMPILE_MIN_STEPS` steps (the whole run's ``steps``, so that a resumed run compiles like the
    uninterrupted one). ``True`` raises ``ValueError`` where the model or
    device cannot be compiled.
    """
    if speed.compile is False:
        return False
    blocks = len(getattr(model, "blocks", [])) if type(model).__name__ == "HookedTransformer" else 0
    problem = (f"compile=True needs a HookedTransformer with at least two blocks, got {type(model).__name__}"
               if blocks < 2 else None)
    if problem is None and len({p.device for p in model.parameters()}) > 1:
        problem = "compile=True needs the model on one device (this one is spread over several)"
    if problem is None and getattr(model.cfg, "num_experts", None):
        problem = "compile=True does not cover mixture-of-experts blocks (their experts' sites read routed rows)"
    missing = compile_backend_missing(device)
    if speed.compile is True:
        if problem or missing:
            raise ValueError(problem or f"compile=True: {missing}; use compile=False")
        return True
    return problem is None and missing is None and steps >= COMPILE_MIN_STEPS and \
        model.cfg.d_model >= COMPILE_MIN_WIDTH


class TrainingSpeedups:
    """Which speed-ups a run's training passes use, and the context managers that apply them.

    Attributes:
        amp_dtype: the autocast dtype of the training passes (None: the model's precision).
        compiled: whether the blocks run compiled (the hooks must then be shared: see ``Interpolator``).
        precast: whether the matrix weights are cast to ``amp_dtype`` once for the run.
    """

    def __init__(self, model, speed, steps: int):
        """``speed``: the run's :class:`~mgnp_lens.config.SpeedSettings`; ``steps``: its length (whether compiling
        pays for itself)."""
        self.model = model
        self.device = next(model.parameters()).device
        self.model_dtype = next(model.parameters()).dtype
        self.amp_dtype = autocast_dtype(speed, self.device, self.model_dtype)
        self.compiled = use_compile(speed, model, self.device, steps)
        self.precast = speed.precast_weights
        self.suppress_compile_errors = speed.compile == "auto"
        self._engaged: ExitStack | None = None

    def describe(self) -> dict:
        """What a run records of its speed-ups (``config.json``)."""
        return {"training_precision": str(self.amp_dtype or self.model_dtype).replace("torch.", ""),
                "compiled_blocks": self.compiled}

    def autocast(self):
        """``torch.autocast`` to :attr:`amp_dtype` for one training pass (a no-op without one)."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    @contextmanager
    def low_precision(self):
        """Unmasked passes in the training passes' precision for the ``with``: autocast with precast weights, eager
        blocks (the compiled graph runs no per-site recording hooks). Used for the corrupted activations the
        training passes mix in (:func:`mgnp_lens.precompute.precompute`); a no-op without autocast."""
        with ExitStack() as stack:
            if self.precast:
                stack.enter_context(precast_weights(self.model, self.amp_dtype))
            stack.enter_context(self.autocast())
            yield

    def _engage(self) -> None:
        self._engaged = ExitStack()
        if self.precast:
            self._engaged.enter_context(precast_weights(self.model, self.amp_dtype))
        if self.compiled:
            self._engaged.enter_context(compiled_blocks(self.model))

    def _disengage(self) -> None:
        if self._engaged is not None:
            self._engaged.close()
            self._engaged = None

    @contextmanager
    def applied(self):
        """Every speed-up on for the ``with``: frozen weights, the fast weight layout, precast weights and
        compiled blocks; all undone on exit."""
        with ExitStack() as stack:
            stack.enter_context(frozen_weights(self.model))
            stack.enter_context(fast_layout(self.model))
            # "auto" falls back to eager blocks if compiling fails (e.g. a broken compiler), True lets it
            # raise; a compiled graph is per model shape and precision, and the limit leaves room for many
            stack.enter_context(torch._dynamo.config.patch(suppress_errors=self.suppress_compile_errors,
                                                           recompile_limit=64))
            stack.callback(self._disengage)
            self._engage()
            yield self

    @contextmanager
    def suspended(self):
        """Precast weights and compiled blocks off for the ``with`` (a float32, eager pass), then on again."""
        self._disengage()
        try:
            yield
        finally:
            self._engage()


def training_speedups(model, config):
    """``with training_speedups(model, config) as fast:`` applies the speed-ups ``config`` asks for."""
    return TrainingSpeedups(model, config).applied()
