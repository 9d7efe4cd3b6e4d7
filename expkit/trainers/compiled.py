"""trainer.compile=true: the whole training step (forward, loss, backward, optimizer update) as one
compiled function of the stack's tensors, for K >= 1 members (a fused group compiles as one step).

The step is a pure function of (flat parameters, optimizer state, BatchNorm buffers, batch, step
number): gradients come from torch.func.grad of the members' summed loss of
torch.func.functional_call(net, (parameters as views of the flat, buffers)); BatchNorm updates its
running statistics in the buffers passed in; the update is stacked.update, the eager step's own
formula, applied in place to the flat and state tensors the eager step uses. Everything the step
mutates is an input, and every hyper-parameter is a tensor (a Python number would be a guarded
constant: each new value a recompile), so one graph serves a whole run: torch.compile with
fullgraph=True, dynamic=False. A stack of another K (a member left) compiles once more.

Not compiled, with the reason in the log: the short last batch of an epoch (another shape: it
takes the eager step, one step an epoch), evaluation (forward only, eager), runs that record
gradient norms (trainer.grad_layers) and fp16-mixed (its loss scaling skips steps). If compiling
fails, the run goes on eager and summary.json says why (`compile.fallback`).

trainer.compile=auto trains its first epoch eagerly and times its steps, then compiles when the steps
left are expected to save more than compiling costs (auto_decision; the log and summary.json's
`compile.auto` say why, either way).
"""
import importlib.util
import logging
import shutil
import time
import types

import torch
from torch.func import functional_call, grad

from expkit.trainers.stacked import _view, update

log = logging.getLogger(__name__)


# Measured on this project's 2-core CPU (P1C, scripts/bench.py): the compiled step of the 6x16+BN MLP takes
# about a third of the eager step's time; compiling takes 4-6 s with a warm inductor cache, 15-39 s cold.
COMPILED_SHARE = 0.35
COMPILE_S = {"warm": 8.0, "cold": 30.0}


def auto_decision(eager_step_s, steps_left, warm, compiler):
    """trainer.compile=auto: (compile, why). Compile when the steps left, each expected to save
    (1 - COMPILED_SHARE) of the eager step timed in the first epoch, save more than compiling costs
    (warm: this step's shapes compiled before on this machine)."""
    if not compiler:
        return False, "no C++ compiler found (torch.compile's CPU code needs one; on CUDA: triton)"
    gain = steps_left * eager_step_s * (1 - COMPILED_SHARE)
    cost = COMPILE_S["warm" if warm else "cold"]
    why = (f"{steps_left} steps left x {eager_step_s * 1e3:.2f} ms eager x {1 - COMPILED_SHARE:.0%} expected saving = "
           f"{gain:.1f} s {'>' if gain > cost else '<='} ~{cost:.0f} s to compile ({'warm' if warm else 'cold'} cache)")
    return gain > cost, why


def compiler_present(device):
    if device.type == "cuda":
        return importlib.util.find_spec("triton") is not None
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def warm_marker(run, batch_size):
    """A file that exists once this step's shapes compiled on this machine (the inductor cache is then warm)."""
    from expkit.cache import cache_dir, key

    return cache_dir("compiled_steps") / key(torch.__version__, run.flat.device.type, str(run.net), run.k,
                                             batch_size, run.opt_name)


class CompiledStep:
    """The compiled step of one Stack: call(xb, yb) -> (per-member mean loss [K], hits [K])."""

    def __init__(self, run, loss_and_hits, stats, cuda_graphs=None):
        t0 = time.perf_counter()  # set-up (importing Dynamo: ~1-2 s in a fresh process) counts as compile time
        from torch._dynamo.utils import counters

        self.run, self.stats, self.counters = run, stats, counters
        net = run.net
        trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
        names = [n for n, _ in trainable]
        shapes = [p.shape for _, p in trainable]
        frozen = {n: p for n, p in net.named_parameters() if not p.requires_grad}
        self.buffers = dict(net.named_buffers())
        self.t = torch.zeros((), device=run.flat.device)

        def loss_of(flat, buffers, xb, yb):
            params = {n: _view(v, s, c) for n, v, s, c in zip(names, run.split(flat), shapes, run.nhwc)}
            out = run(xb, per_member=True, forward=lambda x: functional_call(net, ({**params, **frozen}, buffers), (x,)))
            loss, hits = loss_and_hits(out, yb)
            return loss.sum(), (loss.detach(), hits)

        def step(flat, state, buffers, xb, yb, t):
            g, (loss, hits) = grad(loss_of, has_aux=True)(flat, buffers, xb, yb)
            update(run, flat, g, state, t)
            return loss, hits

        # Dynamo keeps one cache per code object and checks every guard of an entry on each call (~420 guards
        # here: module attributes, closures, tensors). This stack's step gets a code object of its own, so its
        # cache holds one entry, which after the first call runs without Dynamo (see _compile): the loop calls it
        # only with what it was compiled for (full batches of one shape, train mode, the same flat/state/buffer
        # tensors, one precision); another K is another CompiledStep.
        self.own = types.FunctionType(step.__code__.replace(), step.__globals__, step.__name__, step.__defaults__,
                                      step.__closure__)
        # On CUDA the step also runs as a CUDA graph (mode reduce-overhead: one launch replays all its kernels, the
        # standard cure for a small model's launch overhead). A graph reads and writes fixed addresses: the tensors
        # the step mutates are marked static (they are: the same flat/state/buffers every step); each batch is
        # copied into the graph's own input. On the CPU inductor skips CUDA graphs: the same code, the same bits.
        self.cuda_graphs = run.flat.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        stats["cuda_graphs"] = self.cuda_graphs
        if self.cuda_graphs:
            for v in (run.flat, *run.state, *self.buffers.values(), self.t):
                torch._dynamo.mark_static_address(v)
        self.fn = torch.compile(self.own, fullgraph=True, dynamic=False,
                                mode="reduce-overhead" if self.cuda_graphs else None)
        self.call = None  # what runs the compiled step, once compiled (the first call)
        stats["compile_s"] = stats.get("compile_s", 0.0) + time.perf_counter() - t0

    def _compile(self, args):
        """Compile and run the first step: (what runs the step from now on, the first step's output). Compiled by
        Dynamo (its inductor graph from the on-disk cache when warm: ~5 s here; torch's aot_compile recompiles
        every time: ~11 s), then called as Dynamo's own compiled code (its cache entry's transformed bytecode),
        directly: without Dynamo's frame hook, wrapper and cache lookup (~0.15 ms a call: P1C's 418 steps
        0.20 -> 0.135 s). Where torch lacks the entry list, through Dynamo with guard evaluation skipped."""
        out = self.fn(*args)
        try:
            from torch._dynamo.eval_frame import _debug_get_cache_entry_list

            entries = _debug_get_cache_entry_list(self.own.__code__)
        except (ImportError, AttributeError):
            entries = []
        if len(entries) == 1:
            f = self.own
            self.stats["call"] = "direct"
            return types.FunctionType(entries[0].code, f.__globals__, f.__name__, f.__defaults__, f.__closure__), out
        self.stats["call"] = "dynamo, guards skipped"

        def call(*a):
            with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                return self.fn(*a)
        return call, out

    def __call__(self, xb, yb):
        run = self.run
        run.t += 1
        self.t.fill_(run.t)
        args = (run.flat, run.state, self.buffers, xb, yb, self.t)
        if self.cuda_graphs:  # a new iteration: the last step's outputs (read already) may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        if self.call is not None:
            return self.call(*args)
        if self.stats.get("graphs_before") is None:  # the run's first compile sets the graph count's base
            self.stats["graphs_before"] = self.counters["stats"]["unique_graphs"]
        t0 = time.perf_counter()
        try:
            # On the CPU the compiled graph's wrapper (allocations, the calls of its kernels and matmuls) is C++,
            # not Python: P1C's 418 steps 0.146 -> 0.125 s, the same bits; no slower to compile.
            with torch._inductor.config.patch(cpp_wrapper=run.flat.device.type == "cpu"):
                self.call, out = self._compile(args)
        except Exception as ex:  # a graph break or a compiler error: say so, train on eagerly
            run.t -= 1
            self.stats["fallback"] = f"{type(ex).__name__}: {str(ex).splitlines()[0][:300] if str(ex) else ''}"
            log.warning("trainer.compile: the step could not be compiled (%s); training eagerly",
                        self.stats["fallback"])
            raise Fallback() from None
        self.stats["compile_s"] = self.stats.get("compile_s", 0.0) + time.perf_counter() - t0
        if self.stats.get("marker"):
            self.stats["marker"].touch()
        return out


class Fallback(Exception):
    """The compiled step failed: the loop trains on eagerly."""


def eager_reason(t_cfg, scaler):
    """Why a run with trainer.compile=true keeps the eager step, or None."""
    if t_cfg.grad_layers:
        return "trainer.grad_layers records each layer's gradient norm, which the compiled step does not return"
    if scaler is not None:
        return "fp16-mixed skips the steps whose gradient overflowed, a branch the compiled step does not take"
    return None
