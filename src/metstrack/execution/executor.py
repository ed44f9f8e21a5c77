"""Where per-patient work runs: this process, a local process pool, or a Dask cluster.

Every cohort workflow (``preprocess``, ``predict``, ``evaluate``, ``track``) maps
one function over its units of work (a patient; a study for ``evaluate``) and
collects typed records in the coordinating process, which alone writes the
catalog and the cohort tables. An :class:`Executor` only decides where the
function runs:

- :class:`LocalExecutor`: in this process (``workers=1``) or in a
  ``concurrent.futures`` process pool (what the workflows always did);
- :class:`DaskExecutor`: on a ``dask.distributed`` cluster, either one it
  starts on this machine (a ``LocalCluster``) or the scheduler at ``--scheduler``
  (SLURM via dask-jobqueue, Kubernetes via dask-kubernetes: ``docs/scale.md``).

A worker that dies mid-task (killed, out of memory) loses nothing: Dask runs
its task again on another worker and the coordinator receives one result per
unit, so nothing is duplicated either. Every output file is written atomically
(:mod:`metstrack.core.atomic`), so a half-written file of the killed worker is
never mistaken for a finished one, and the workflows sweep the temporaries a
dead writer left when the run ends.

Use an executor as a context manager; :func:`open_executor` builds one from
:class:`ExecutorOptions` (the CLI's ``--executor``, ``--scheduler``,
``--workers`` and ``--task-memory``).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from uuid import uuid4

from metstrack.errors import ConfigError, MetstrackError, did_you_mean

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: Executor names of ``--executor``.
EXECUTORS: tuple[str, ...] = ("local", "dask")
#: Dask worker resource that ``--task-memory`` asks for, in GiB (workers declare it with
#: ``dask worker --resources "MEMORY_GIB=64"``; a LocalCluster declares its memory limit).
MEMORY_RESOURCE = "MEMORY_GIB"
#: Seconds to wait for a ``--scheduler`` before giving up.
CONNECT_TIMEOUT_S = 5.0


class SchedulerUnreachableError(MetstrackError):
    """The Dask scheduler at ``--scheduler`` did not answer."""


class WorkerLostError(MetstrackError):
    """One unit of work took down every worker it was given (Dask's ``KilledWorker``)."""


@dataclass(frozen=True)
class ExecutorOptions:
    """How to run a cohort workflow's units of work.

    Attributes:
        kind: ``local`` (this process, or a process pool when ``workers > 1``) or
            ``dask``.
        workers: Local worker processes; for ``dask`` without ``scheduler`` the
            number of LocalCluster workers (ignored with a scheduler: the
            cluster has its own).
        scheduler: Address of a running Dask scheduler (``tcp://host:8786``);
            ``None`` with ``kind="dask"`` starts a LocalCluster.
        task_memory_gib: Memory one unit of work needs, in GiB (a Dask worker
            resource, :data:`MEMORY_RESOURCE`); ``None``: no hint.
        connect_timeout_s: Seconds to wait for ``scheduler``.
    """

    kind: str = "local"
    workers: int = 1
    scheduler: str | None = None
    task_memory_gib: float | None = None
    connect_timeout_s: float = CONNECT_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise ConfigError(f"executor {self.kind!r}; {did_you_mean(self.kind, EXECUTORS)}")
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")
        if self.scheduler is not None and self.kind != "dask":
            raise ConfigError("--scheduler needs --executor dask")
        if self.task_memory_gib is not None:
            if self.kind != "dask":
                raise ConfigError("--task-memory needs --executor dask")
            if not self.task_memory_gib > 0:
                raise ConfigError(f"task memory must be > 0 GiB, got {self.task_memory_gib}")


class Executor(Protocol):
    """Runs one function over units of work and yields results as they finish."""

    #: ``local`` or ``dask``.
    name: str

    def map_unordered(
        self, fn: Callable[..., R], items: Sequence[T], /, *args: Any, **kwargs: Any
    ) -> Iterator[tuple[int, R]]:
        """Yield ``(index, fn(items[index], *args, **kwargs))`` in completion order.

        The first unit that raises stops the run: pending units are cancelled and
        the exception is raised in the caller.
        """
        ...

    def close(self) -> None:
        """Release the workers (idempotent)."""
        ...

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None: ...


class LocalExecutor:
    """This process (``workers == 1``) or a process pool of ``workers`` processes.

    Args:
        workers: Worker processes; 1 runs every unit in this process, in order.
        mp_context: Start method of the pool's processes (``None``: the platform's).
    """

    name = "local"

    def __init__(self, workers: int = 1, *, mp_context: str | None = None) -> None:
        self.workers = int(workers)
        self.mp_context = mp_context

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: a pool lives for one :meth:`map_unordered`."""

    def map_unordered(
        self, fn: Callable[..., R], items: Sequence[T], /, *args: Any, **kwargs: Any
    ) -> Iterator[tuple[int, R]]:
        """See :meth:`Executor.map_unordered`."""
        if self.workers <= 1 or len(items) <= 1:
            for i, item in enumerate(items):
                yield i, fn(item, *args, **kwargs)
            return
        ctx = multiprocessing.get_context(self.mp_context) if self.mp_context else None
        with ProcessPoolExecutor(max_workers=min(self.workers, len(items)), mp_context=ctx) as pool:
            futures: dict[Future, int] = {
                pool.submit(fn, item, *args, **kwargs): i for i, item in enumerate(items)
            }
            pending = set(futures)
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in sorted(done, key=futures.__getitem__):
                        yield futures[fut], fut.result()
            finally:
                for fut in pending:
                    fut.cancel()


class DaskExecutor:
    """Units of work on a ``dask.distributed`` cluster.

    Args:
        scheduler: Address of a running scheduler; ``None`` starts a LocalCluster
            of ``workers`` single-threaded worker processes on this machine.
        workers: LocalCluster workers (ignored with ``scheduler``).
        task_memory_gib: Memory each unit needs (GiB), requested as the worker
            resource :data:`MEMORY_RESOURCE`; refused before any work when no
            worker offers that much.
        connect_timeout_s: Seconds to wait for ``scheduler``.

    Raises (on entering):
        SchedulerUnreachableError: ``scheduler`` does not answer in time.
        ConfigError: Workers are connected and none offers ``task_memory_gib`` (with
            none connected yet, as in an adaptive cluster, the run goes on: the
            scheduler places each unit when a worker that offers enough joins).
    """

    name = "dask"

    def __init__(
        self,
        scheduler: str | None = None,
        *,
        workers: int = 2,
        task_memory_gib: float | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.scheduler = scheduler
        self.workers = int(workers)
        self.task_memory_gib = task_memory_gib
        self.connect_timeout_s = float(connect_timeout_s)
        self.client: Any = None
        self._cluster: Any = None

    def __enter__(self) -> DaskExecutor:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Connect to the scheduler, or start the LocalCluster (idempotent)."""
        if self.client is not None:
            return
        from distributed import Client, LocalCluster

        if logging.getLogger().getEffectiveLevel() > logging.INFO:
            # distributed logs every worker start and stop at INFO on its own handler
            logging.getLogger("distributed").setLevel(logging.WARNING)
        if self.scheduler is not None:
            problem = _probe_scheduler(self.scheduler, self.connect_timeout_s)
            if problem is not None:
                raise SchedulerUnreachableError(
                    f"Dask scheduler {self.scheduler} cannot be reached ({problem}); check the "
                    "address (tcp://HOST:8786) and that `dask scheduler` runs there, or leave "
                    "out --scheduler to start a local cluster"
                )
            self.client = Client(
                self.scheduler, timeout=f"{self.connect_timeout_s}s", set_as_default=False
            )
        else:
            total_gib = _total_memory_gib()
            per_worker = max(total_gib / max(self.workers, 1), 0.5)
            self._cluster = LocalCluster(
                n_workers=self.workers,
                threads_per_worker=1,
                processes=True,
                # a free port: the default 8787 may be another cluster's (and Dask warns)
                dashboard_address=":0",
                memory_limit=f"{per_worker:.3f}GiB",
                resources={MEMORY_RESOURCE: round(per_worker, 3)},
                silence_logs=logging.ERROR,
            )
            self.client = Client(self._cluster, set_as_default=False)
        self._check_memory()

    def _check_memory(self) -> None:
        if self.task_memory_gib is None:
            return
        info = self.client.scheduler_info()["workers"].values()
        if not info:  # an adaptive cluster (SLURM, Kubernetes) starts workers on demand
            log.warning(
                "no Dask worker is connected yet; each unit of --task-memory %g GiB waits "
                "for a worker that offers %s",
                self.task_memory_gib,
                MEMORY_RESOURCE,
            )
            return
        offered = [float(w.get("resources", {}).get(MEMORY_RESOURCE, 0.0)) for w in info]
        if max(offered) < self.task_memory_gib:
            self.close()
            raise ConfigError(
                f"--task-memory {self.task_memory_gib:g} GiB: no Dask worker offers that much "
                f"(largest {MEMORY_RESOURCE}: {max(offered):g} GiB); start workers with "
                f'`dask worker --resources "{MEMORY_RESOURCE}=N"` (N in GiB) or lower --task-memory'
            )

    def close(self) -> None:
        """Disconnect; a LocalCluster this executor started is shut down."""
        if self.client is not None:
            self.client.close()
            self.client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def worker_pids(self) -> dict[str, int]:
        """Process ID of every worker, by worker address."""
        self.open()
        return dict(self.client.run(os.getpid))

    def map_unordered(
        self, fn: Callable[..., R], items: Sequence[T], /, *args: Any, **kwargs: Any
    ) -> Iterator[tuple[int, R]]:
        """See :meth:`Executor.map_unordered`; one Dask task per item."""
        from distributed import KilledWorker, as_completed

        self.open()
        if not items:
            return
        resources = (
            {MEMORY_RESOURCE: self.task_memory_gib} if self.task_memory_gib is not None else None
        )
        run = uuid4().hex[:8]
        name = getattr(fn, "__name__", "task")
        futures = {
            self.client.submit(
                fn,
                item,
                *args,
                key=f"{name}-{run}-{i}",
                pure=False,
                resources=resources,
                **kwargs,
            ): i
            for i, item in enumerate(items)
        }
        try:
            for fut in as_completed(list(futures), loop=self.client.loop):
                try:
                    result = fut.result()
                except KilledWorker as exc:
                    item = items[futures[fut]]
                    raise WorkerLostError(
                        f"{getattr(item, 'patient_id', item)!s:.80}: every worker that ran it "
                        f"died ({exc}); it probably needs more memory than a worker has: "
                        "give --task-memory and workers with more memory"
                    ) from None
                yield futures[fut], result
        finally:
            self.client.cancel(list(futures))


def _probe_scheduler(address: str, timeout_s: float) -> str | None:
    """Why ``address`` is not a Dask scheduler answering within ``timeout_s``; ``None`` if it is.

    A plain handshake in a private event loop, so a dead address costs at most
    ``timeout_s`` and leaves no half-started client behind.
    """
    from distributed.comm import connect
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
        if scheme == "tcp":  # nothing listening is known at once, without Dask's retries
            socket.create_connection(parse_host_port(location), timeout=timeout_s).close()
    except (OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"[:200]

    async def probe() -> None:
        comm = await connect(address, timeout=timeout_s)
        try:
            reply = await asyncio.wait_for(_identity(comm), timeout_s)
        finally:
            await comm.close()
        if not isinstance(reply, dict) or reply.get("type") != "Scheduler":
            raise ConnectionError(f"the server there is not a Dask scheduler ({reply!r:.60})")

    try:
        asyncio.run(asyncio.wait_for(probe(), 2 * timeout_s))
    except (OSError, TimeoutError, ValueError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else f"no answer in {timeout_s:g} s"
        return f"{type(exc).__name__}: {text[:160]}"
    except Exception:  # noqa: BLE001 - garbage from a server that is not a scheduler
        return "the server there does not answer as a Dask scheduler"
    return None


async def _identity(comm: Any) -> Any:
    await comm.write({"op": "identity", "reply": True})
    return await comm.read()


def _total_memory_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return 4.0


def open_executor(options: ExecutorOptions | None = None, *, mp_context: str | None = None):
    """An :class:`Executor` for ``options`` (use it in a ``with`` block).

    Args:
        options: The executor settings (``None``: this process).
        mp_context: Start method of a local pool (``spawn`` where the parent holds threads).
    """
    opts = options or ExecutorOptions()
    if opts.kind == "local":
        return LocalExecutor(opts.workers, mp_context=mp_context)
    return DaskExecutor(
        opts.scheduler,
        workers=opts.workers,
        task_memory_gib=opts.task_memory_gib,
        connect_timeout_s=opts.connect_timeout_s,
    )


__all__ = [
    "CONNECT_TIMEOUT_S",
    "EXECUTORS",
    "MEMORY_RESOURCE",
    "DaskExecutor",
    "Executor",
    "ExecutorOptions",
    "LocalExecutor",
    "SchedulerUnreachableError",
    "WorkerLostError",
    "open_executor",
]
