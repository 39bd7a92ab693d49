"""Distributed data-parallel (DDP) set-up, kept out of the model and the loop.

`training_spec.distributed: true` trains in `world_size` processes, one per device:

* started by `torchrun` (RANK, WORLD_SIZE and LOCAL_RANK in the environment): this
  process joins torchrun's process group; torchrun's WORLD_SIZE wins over `world_size`;
* otherwise `run_train` starts `world_size` processes itself (torch.multiprocessing,
  spawn) from inside its one Hydra job: one Hydra run directory, one log file.

The loop calls only the functions below for anything multi-process: `wrap_model`
(DDP averages gradients; FSDP2 shards the weights), `full_state_dict` /
`full_optimizer_state` (checkpoints: collective under FSDP, the result lands on rank 0),
`sum_across_ranks` / `mean_across_ranks` (metrics), and `is_main_process` (only rank 0
writes logs, checkpoints and exports). Each rank reads its own part of the split
(`sequifier.data.lazy`); every rank makes the same number of steps.

`data_parallelism`: `ddp` (DistributedDataParallel: every rank holds the whole model and
optimizer state, gradients are all-reduced) or `fsdp` (`fully_shard`: each rank keeps
1/world_size of the weights, gradients and optimizer state, all-gathering a block's
weights just for its forward/backward). Both average the ranks' gradients, so they train
to the same weights; FSDP trades communication for memory. Checkpoints hold the full,
unsharded state either way (gathered to rank 0), but the optimizer state of an FSDP run
is keyed by parameter name, so resume an FSDP checkpoint with `fsdp`.

Backend: `nccl` (the default) needs CUDA devices. With a non-CUDA `device` it falls
back to `gloo` and says so in the log; any other backend name is an error.
"""

import logging
import os
import pickle
import socket
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, List, Optional

import torch

from sequifier.config.schema import TrainingSpec
from sequifier.errors import SequifierError
from sequifier.signals import STOPPED_STATUS, Stopped, StopSignals

logger = logging.getLogger(__name__)

BACKENDS = ("nccl", "gloo")
DATA_PARALLELISMS = ("ddp", "fsdp")
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# A rank that dies leaves the others blocked in a collective: don't wait torch's 30 min.
COLLECTIVE_TIMEOUT = timedelta(minutes=5)
# How long the other ranks wait at the end for rank 0, which exports the best and last
# models (ONNX export of a large model can take longer than COLLECTIVE_TIMEOUT) and
# writes the summary after the last collective.
FINISH_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands; rank 0 of 1 without a process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None

    @property
    def enabled(self) -> bool:
        return self.backend is not None


_SINGLE = DistContext()
_context = _SINGLE


def context() -> DistContext:
    """This process's place in the process group (set while a distributed run is on)."""
    return _context


def is_main_process() -> bool:
    return _context.rank == 0


def launched_by_torchrun() -> bool:
    return all(v in os.environ for v in TORCHRUN_VARIABLES)


# ---- checks ----------------------------------------------------------------------------

def check_backend_name(backend: str) -> None:
    if backend not in BACKENDS:
        raise SequifierError(
            f"training_spec.backend: '{backend}' is not supported; choose one of "
            f"{', '.join(BACKENDS)} (nccl for CUDA GPUs, gloo for CPUs)")


def choose_backend(backend: str, device: str, announce: bool = False) -> str:
    """The process-group backend for `device`: nccl on a non-CUDA device becomes gloo."""
    check_backend_name(backend)
    if backend == "nccl" and not device.startswith("cuda"):
        if announce:
            logger.warning("training_spec.backend: nccl needs CUDA devices; using gloo on device "
                        "'%s'", device)
        return "gloo"
    if backend == "nccl" and not torch.distributed.is_nccl_available():
        raise SequifierError("training_spec.backend: nccl is not available in this torch build; "
                             "set backend: gloo")
    return backend


def check_supported(spec: TrainingSpec) -> None:
    """Reject distributed settings this machine cannot run, before any process starts.

    Only a distributed run uses them (the spec: `backend` is "only relevant if
    distributed: true"); a one-process run logs a set backend or data_parallelism as
    unused instead (`train/run.py`, `_unused_setting_notes`). A data_parallelism that is
    not an option at all is refused either way."""
    if spec.data_parallelism not in DATA_PARALLELISMS:
        raise SequifierError(
            f"training_spec.data_parallelism: '{spec.data_parallelism}' is not one of "
            f"{', '.join(DATA_PARALLELISMS)} (ddp: every rank holds the model; fsdp: weights and "
            "optimizer state sharded over the ranks)")
    if not spec.distributed:
        return
    if not torch.distributed.is_available():
        raise SequifierError("training_spec.distributed: this torch build has no "
                             "torch.distributed; set distributed: false")
    choose_backend(spec.backend, spec.device)  # checks the name first
    world_size = int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else spec.world_size
    if world_size < 1:
        raise SequifierError(f"training_spec.world_size must be >= 1, got {world_size}")
    device_problem = distributed_device_problem(spec.device)
    if device_problem:
        raise SequifierError(device_problem)
    local = processes_on_this_node(spec.world_size)
    if spec.device.startswith("cuda") and local > torch.cuda.device_count():
        raise SequifierError(
            f"training_spec.world_size: {local} processes on this machine need {local} CUDA devices, "
            f"{torch.cuda.device_count()} found; lower world_size (or torchrun's --nproc-per-node) "
            "or use device: cpu with gloo")


def distributed_device_problem(device: str) -> str | None:
    """A distributed run drives one GPU per process (cuda:LOCAL_RANK), so a device that
    names one GPU would put every rank on it."""
    kind, _, index = device.partition(":")
    if kind == "cuda" and index:
        return (f"training_spec.device: '{device}' names one GPU, but a distributed run uses one GPU "
                "per process; set device: cuda (rank r uses cuda:LOCAL_RANK), and choose the GPUs "
                "with CUDA_VISIBLE_DEVICES")
    return None


def processes_on_this_node(world_size: int) -> int:
    """The ranks that share this machine's GPUs: torchrun's LOCAL_WORLD_SIZE (its
    WORLD_SIZE counts every node), or all `world_size` ranks that `launch` spawns here."""
    if launched_by_torchrun():
        return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    return world_size


def rank_device(device: str) -> str:
    """Each rank drives its own GPU: `cuda` means cuda:LOCAL_RANK under DDP (a device
    naming one GPU is refused for distributed runs by `check_supported`)."""
    if _context.enabled and device == "cuda":
        return f"cuda:{_context.local_rank}"
    return device


# ---- process group ---------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_finish_group = None  # a gloo group with FINISH_TIMEOUT, for the barrier at the end


def _join_group(ctx: DistContext) -> None:
    global _context, _finish_group
    torch.distributed.init_process_group(ctx.backend, rank=ctx.rank, world_size=ctx.world_size,
                                         timeout=COLLECTIVE_TIMEOUT)
    if ctx.backend == "nccl":
        torch.cuda.set_device(ctx.local_rank)
    # gloo whatever the backend: a CPU barrier, outside NCCL's watchdog and its timeout
    _finish_group = torch.distributed.new_group(backend="gloo", timeout=FINISH_TIMEOUT)
    _context = ctx


def _leave_group(finished: bool) -> None:
    """Tear the group down; after a clean finish, first wait for every rank.

    Without the barrier a rank that finishes first can destroy its gloo connections
    while a peer still uses them, and the peer aborts in C++ ("terminate called
    without an active exception"). After an error there is no barrier: the peers may
    never arrive. The barrier runs on its own gloo group with FINISH_TIMEOUT, since
    rank 0 may still be exporting the models.
    """
    global _context, _finish_group
    _context = _SINGLE
    group, _finish_group = _finish_group, None
    if torch.distributed.is_initialized():
        if finished:
            # the other ranks wait here while rank 0 exports: FINISH_TIMEOUT, not the
            # collectives' COLLECTIVE_TIMEOUT
            torch.distributed.barrier(group=group)
        torch.distributed.destroy_process_group()


def _share_cpu_threads(world_size: int) -> None:
    """Split the cores between the ranks instead of each rank using all of them."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))


@dataclass(frozen=True)
class LogTarget:
    """One console or file handler of the launcher's root logger, as plain values."""

    stream: Optional[str]  # "stdout" / "stderr", or None for a file
    filename: Optional[str]
    level: int
    fmt: Optional[str]
    datefmt: Optional[str]


def _log_targets() -> tuple[int, List[LogTarget]]:
    """The root logger's level and its console and file handlers (Hydra's console and
    run-folder log): a spawned process starts a fresh interpreter without them."""
    root = logging.getLogger()
    targets = []
    for h in root.handlers:
        fmt = h.formatter._fmt if h.formatter else None
        datefmt = h.formatter.datefmt if h.formatter else None
        if isinstance(h, logging.FileHandler):
            targets.append(LogTarget(None, h.baseFilename, h.level, fmt, datefmt))
        elif isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr):
            name = "stdout" if h.stream is sys.stdout else "stderr"
            targets.append(LogTarget(name, None, h.level, fmt, datefmt))
    return root.level, targets


def _log_like_the_launcher(level: int, targets: List[LogTarget]) -> None:
    root = logging.getLogger()
    root.setLevel(level)
    for t in targets:
        handler = (logging.StreamHandler(getattr(sys, t.stream)) if t.stream
                   else logging.FileHandler(t.filename, mode="a", encoding="utf-8"))
        handler.setLevel(t.level)
        handler.setFormatter(logging.Formatter(t.fmt, t.datefmt))
        root.addHandler(handler)


def _spawned_rank(rank: int, fn: Callable, args: tuple, world_size: int, backend: str,
                  port: int, results, log_setup: tuple) -> None:
    """Body of one process started by `launch`; rank 0 sends `fn`'s result back and logs
    through the launcher's console and log file (the others log nothing)."""
    if rank == 0:
        _log_like_the_launcher(*log_setup)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    _share_cpu_threads(world_size)
    finished = False
    try:
        _join_group(DistContext(rank, world_size, rank, backend))
        result = fn(*args)
        if rank == 0:
            # Plain pickle: tensors travel by value, not as shared-memory handles that die
            # with this process before the parent reads them.
            results.put(("ok", pickle.dumps(result)))
        finished = True
    except SequifierError as e:
        results.put(("error", str(e)))
        raise
    except Stopped as e:  # a second signal: this rank stops at once, the launcher says so
        results.put(("stopped", e.signum))
        _leave_group(False)
        _exit_spawned_rank(STOPPED_STATUS)
    finally:
        _leave_group(finished)
    _exit_spawned_rank()


def _exit_spawned_rank(status: int = 0) -> None:
    """End a spawned rank without the interpreter's normal shutdown.

    After a clean run, gloo's background threads can still be joinable when C++ static
    destructors run at exit, and the process then aborts ("terminate called without an
    active exception"; about 1 run in 10 on these machines, even in a minimal DDP
    script). Everything this process owes is done by now: results went through a
    SimpleQueue (written synchronously), so flush the streams and leave directly.
    """
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _forward(ranks, signum: int) -> None:
    for process in ranks.processes if ranks is not None else []:
        if process.is_alive():
            os.kill(process.pid, signum)


def needs_launch(spec: TrainingSpec) -> bool:
    """True in the process that must start (or join) the ranks of a distributed run."""
    return spec.distributed and not _context.enabled


def launch(fn: Callable[..., Any], args: tuple, spec: TrainingSpec) -> Any:
    """Run `fn(*args)` on every rank of a process group and return rank 0's result.

    Under torchrun this process is one rank: it joins the group, runs and leaves.
    Otherwise it starts `spec.world_size` processes (so `fn` must be a module-level
    function and `args` picklable) and waits; if one fails the others are stopped and
    its error is raised here, a SequifierError with its one-line message.
    """
    check_supported(spec)
    backend = choose_backend(spec.backend, spec.device, announce=True)
    if launched_by_torchrun():
        ctx = DistContext(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                          int(os.environ["LOCAL_RANK"]), backend)
        if ctx.world_size != spec.world_size:
            logger.warning("torchrun started %d processes; training_spec.world_size (%d) is ignored",
                        ctx.world_size, spec.world_size)
        finished = False
        try:
            _join_group(ctx)
            result = fn(*args)
            finished = True
            return result
        finally:
            _leave_group(finished)

    import torch.multiprocessing as mp

    results = mp.get_context("spawn").SimpleQueue()
    # torch logs "Terminating process N via signal SIGTERM" for each rank it stops after
    # another failed; the failure itself is reported below (one line for a SequifierError)
    spawn_log = logging.getLogger("torch.multiprocessing.spawn")
    level = spawn_log.level
    spawn_log.setLevel(logging.ERROR)
    # the parent passes a stop signal on to the ranks (they agree on the step to stop after)
    ranks = None
    forwarding = StopSignals(spec.stop_signals, graceful=True, on_signal=lambda signum: _forward(ranks, signum))
    try:
        with forwarding:
            ranks = mp.start_processes(_spawned_rank, args=(fn, args, spec.world_size, backend, _free_port(),
                                                            results, _log_targets()),
                                       nprocs=spec.world_size, join=False, start_method="spawn")
            if forwarding.signum is not None:  # arrived while the ranks were being started
                _forward(ranks, forwarding.signum)
            while not ranks.join():
                pass
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
        status = None if results.empty() else results.get()
        if status is not None and status[0] == "error":
            raise SequifierError(status[1]) from None
        if status is not None and status[0] == "stopped":
            raise Stopped(status[1]) from None
        if forwarding.signum is not None:  # a rank still starting up ended on the signal itself
            raise Stopped(forwarding.signum) from None
        raise RuntimeError(f"a distributed training process failed:\n{e}") from None
    finally:
        spawn_log.setLevel(level)
    if results.empty():
        raise RuntimeError("distributed training ended without a result from rank 0")
    return pickle.loads(results.get()[1])


# ---- what the loop calls ---------------------------------------------------------------

def wrap_model(model: torch.nn.Module, spec: TrainingSpec,
               device: torch.device | None = None) -> torch.nn.Module:
    """The module to run forward/backward through: DDP-wrapped, or (fsdp) `model` itself
    sharded in place. Build the optimizer after this: FSDP replaces the parameters.

    `device` is where the model and the batches are (default: cpu); FSDP's mesh is built
    for it, so on a GPU machine a `device: cpu` run keeps its shards on the CPU (FSDP's
    own default is the machine's accelerator)."""
    if not _context.enabled:
        return model
    device = device or torch.device("cpu")
    if spec.data_parallelism == "fsdp":
        import warnings

        from torch.distributed.device_mesh import init_device_mesh

        # The loop never changes model outputs in place, which is what this warns about.
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        mesh = init_device_mesh(device.type, (_context.world_size,))
        # One unit per repeated block (the children of every ModuleList), then the rest:
        # only one block's full weights exist at a time in forward and backward.
        for module in list(model.modules()):
            if isinstance(module, torch.nn.ModuleList):
                for block in module:
                    shard_by_dtype(block, mesh)
        shard_by_dtype(model, mesh, root=True)
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index if device.index is not None else _context.local_rank] \
        if device.type == "cuda" else None
    # The model's only buffers are the RoPE tables: constants every rank computes alike
    # (non-persistent, rebuilt from rope_theta). Broadcasting them from rank 0 before
    # every forward (DDP's default) would only cost a collective per step. The flag is
    # `forward_sync_buffers` in newer torch (2.13 here; `broadcast_buffers` is deprecated there).
    import inspect

    name = "forward_sync_buffers" if "forward_sync_buffers" in \
        inspect.signature(DistributedDataParallel.__init__).parameters else "broadcast_buffers"
    return DistributedDataParallel(model, device_ids=device_ids, **{name: False})


def dtype_groups(module: torch.nn.Module) -> dict[torch.dtype, list[torch.nn.Module]]:
    """The modules owning `module`'s not yet sharded parameters, by parameter dtype.

    FSDP2 needs one dtype per communication group, and `layer_type_dtypes` can mix them
    in one block (bfloat16 linears beside float32 norms)."""
    from torch.distributed.tensor import DTensor

    def own(m: torch.nn.Module) -> list[torch.nn.Parameter]:  # sharded ones are DTensors
        return [p for p in m.parameters(recurse=False) if p.requires_grad and not isinstance(p, DTensor)]

    groups: dict[torch.dtype, list[torch.nn.Module]] = {}
    for m in module.modules():
        dtypes = {p.dtype for p in own(m)}
        if len(dtypes) > 1:
            raise SequifierError(
                f"training_spec.layer_type_dtypes: {type(m).__name__} holds parameters of several "
                f"dtypes ({', '.join(sorted(map(str, dtypes)))}), which FSDP cannot shard; use "
                "data_parallelism: ddp")
        if dtypes:
            groups.setdefault(dtypes.pop(), []).append(m)
    return groups


def shard_by_dtype(module: torch.nn.Module, mesh, root: bool = False) -> None:
    """`fully_shard` `module` as one unit; with parameters of several dtypes, those of
    every dtype but one first become units of their own (one all-gather per dtype).

    The root keeps the output heads' dtype in its own group, and its other units stay
    gathered after forward as the root's group does: the loop reads the heads' class
    vectors (and a tied embedding table) outside the forward pass, in validation and for
    sampled softmax, where a resharded parameter would still be a shard."""
    from torch.distributed.fsdp import fully_shard

    groups = dtype_groups(module)
    if len(groups) > 1:
        heads = getattr(module, "heads", None) if root else None
        head_dtypes = {p.dtype for p in heads.parameters()} if heads is not None else set()
        keep = next(iter(head_dtypes)) if len(head_dtypes) == 1 and next(iter(head_dtypes)) in groups \
            else max(groups, key=lambda d: sum(p.numel() for m in groups[d] for p in m.parameters(recurse=False)))
        for dtype, owners in groups.items():
            if dtype != keep:
                fully_shard(owners, mesh=mesh, reshard_after_forward=False if root else None)
    fully_shard(module, mesh=mesh)


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_state_dict(model: torch.nn.Module) -> dict:
    """The full weights as detached CPU copies. Under FSDP they are gathered from every
    rank (so every rank must call this) and only rank 0 gets them (the others: {})."""
    if not is_sharded(model):
        return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                cpu_offload=True))


def full_optimizer_state(model: torch.nn.Module, optimizer) -> dict:
    """The optimizer state for a checkpoint; under FSDP gathered like `full_state_dict`
    (unsharded, keyed by parameter name)."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
    )

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(
        full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: torch.nn.Module, optimizer, state: dict) -> None:
    """Inverse of `full_optimizer_state`; under FSDP each rank keeps its own shard."""
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


@contextmanager
def gradient_sync(forward_model: torch.nn.Module, sync: bool):
    """Forward and backward of a micro-batch; unless `sync`, without the gradient all-reduce.

    Gradient accumulation sums the gradients of several micro-batches into one optimizer
    step: only the last one's backward needs to average them over the ranks. DDP skips it
    under `no_sync`; FSDP2 keeps unsharded gradients and reduce-scatters them once
    (`set_requires_gradient_sync`).
    """
    module = getattr(forward_model, "_orig_mod", forward_model)  # under torch.compile
    if sync or not _context.enabled:
        yield
    elif is_sharded(module):
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    elif hasattr(module, "no_sync"):
        with module.no_sync():
            yield
    else:
        yield


def sum_across_ranks(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks of a metric tensor (loss sums, counts)."""
    if not _context.enabled:
        return values
    total = values.detach().clone()
    if _context.backend == "nccl" and total.device.type != "cuda":  # NCCL reduces GPU tensors only
        on_gpu = total.to(torch.device("cuda", torch.cuda.current_device()))
        torch.distributed.all_reduce(on_gpu, op=torch.distributed.ReduceOp.SUM)
        return on_gpu.to(values.device)
    torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
    return total


def max_across_ranks(values: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over ranks (a flag any rank raised)."""
    if not _context.enabled:
        return values
    top = values.detach().clone()
    torch.distributed.all_reduce(top, op=torch.distributed.ReduceOp.MAX)
    return top


def concat_across_ranks(values: torch.Tensor) -> torch.Tensor:
    """[..., n] tensors of every rank (n may differ) joined along the last axis, on the CPU."""
    if not _context.enabled:
        return values.cpu()
    gathered: list = [None] * _context.world_size
    torch.distributed.all_gather_object(gathered, values.cpu())
    return torch.cat(gathered, dim=-1)


def mean_across_ranks(values: torch.Tensor) -> torch.Tensor:
    """Element-wise mean over ranks, for per-rank means of equal weight (batch losses)."""
    if not _context.enabled:
        return values
    return sum_across_ranks(values) / _context.world_size


def hydra_overrides_for_rank() -> List[str]:
    """Hydra overrides that keep torchrun's non-zero ranks from writing Hydra output.

    Under torchrun each rank runs the CLI and so composes its own Hydra job. Rank 0
    keeps the run directory, `.hydra/` and the job log; the others only log to the
    console, so no two ranks write the same file.
    """
    if not launched_by_torchrun() or int(os.environ["RANK"]) == 0:
        return []
    return ["hydra.output_subdir=null", "hydra/job_logging=stdout"]
