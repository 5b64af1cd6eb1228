"""distree's runtime against what a user would pick instead to chain model segments across processes.

What is measured. The same 4 segments + exit heads of a WRN (WRN-16-2 and WRN-16-8 by default; random
weights from ``torch.manual_seed(0)``, saved once as a checkpoint that every peer loads, so every peer
computes with the same weights), served as a chain of 4 processes on this machine, by each peer:

- ``distree``: a real ``LocalCluster`` (4 ``distree serve`` processes, gRPC on loopback TCP) with the
  last-exit policy, so every request crosses all 4 nodes; batching off (the spec's default); the client
  is ``distree.runtime.ClusterClient`` (Open Inference Protocol on node 1).
- ``torch-rpc``: ``torch.distributed.rpc`` (TensorPipe) with 4 worker processes; worker k computes
  segment k + exit k and calls worker k+1 with ``rpc_async`` inside an ``async_execution`` function, so
  the answer comes back along the same calls; TensorPipe's default transports and channels (on one host
  it may pick shared memory / cross-memory attach instead of TCP).
- ``torch-rpc-tcp``: the same, restricted to TensorPipe's TCP transport (``uv``) and ``basic`` channel, as
  between two devices.
- ``ray``: 4 async Ray actors, each holding one segment + exit and awaiting the next actor's method
  (answers come back through the chain); numpy arrays between actors; a local Ray instance without a
  dashboard. Skipped with a message when ray is not installed (``pip install -e '.[bench]'``).

Identical across peers: the checkpoint, the inputs (float32, normalised, seeded), the work per process
(segment + exit head of that node; the last one answers softmax probabilities), 1 torch intra-op thread
per process (``torch.set_num_threads(1)``, ``OMP_NUM_THREADS=1``), no batching across requests, all
processes on the same machine and CPUs, unpinned. Before timing, every peer answers the same seeded
inputs and the run stops unless all peers agree (same argmax per row, probabilities within 1e-4, every
row answered by node 4). Each peer's client runs in its own process (a driver), so no peer's client
threads run inside another's.

How. All peers are up at the same time; for each batch size, rounds of blocks are interleaved (a
latency block of each peer in turn, then a throughput block of each, the order rotated every round) so
that the machine's background load falls on all peers alike. Latency: serial requests (concurrency 1)
after 3 untimed ones, median and p99 over all rounds' samples. Throughput: requests at concurrency 16
(after one untimed window), requests/s per round, median over rounds. CPU per request: CPU time of the
4 stage processes (sum of their threads' ``schedstat``) during the throughput blocks, divided by the
requests; "beyond compute" subtracts the same segments computed back to back in one process.

Machine. Whatever runs it: the header names the CPU, core count, versions and load average (at the start
and the end), and docs/peers.md names the machine of its numbers. Each peer is 5 processes (client +
4 stages; Ray adds its own), all peers are up at once, so on a machine with fewer cores than processes
they contend for CPUs: latency then measures scheduling as much as the peers, and the CPU-per-request
columns are the robust ones. ``--quick``: 3 rounds of short blocks, sized for a few minutes on a quiet
2-CPU machine; it took 32 minutes under a load average of 12-26 (start-up of the 4 peers: 1.5-2.5 min).

    python benchmarks/peers.py [--quick] [--models wrn-16-2,wrn-16-8] [--batches 1,8]
                               [--peers distree,torch-rpc,torch-rpc-tcp,ray] [--out FILE.json]
    python benchmarks/peers.py --profile distree:2 [--profile-seconds 20]   # py-spy of one stage

Every process started is stopped at the end, on errors and on Ctrl-C: drivers are their own process
groups (killed as groups), the stage processes they report are killed if still alive, and a driver whose
orchestrator disappears (stdin closed) stops its peer by itself.
"""

from __future__ import annotations

import abc
import argparse
import contextlib
import importlib.util
import json
import os
import platform
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.distributed import rpc

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from runtime_overhead import machine, make_cluster_files  # noqa: E402 - sibling benchmark module

PEERS = ("distree", "torch-rpc", "torch-rpc-tcp", "ray")
MSG = "@@peers "  # prefix of a driver's protocol lines on its stdout (other output is logged)
WORLD = 5  # torch.distributed.rpc: the driver (rank 0) + 4 workers
CHECK_ATOL = 1e-4


class PeerError(RuntimeError):
    """A peer failed to start, to answer, or answered differently from the others."""


# ---------------------------------------------------------------------------- shared work
class Stage:
    """Segment k + exit head k (1-based) of a checkpoint, computed as a distree node computes them."""

    def __init__(self, checkpoint: str, k: int) -> None:
        from distree.checkpoint import load_checkpoint

        torch.set_num_threads(1)
        model, _ = load_checkpoint(checkpoint)
        self.k = k
        self.last = k == model.num_nodes
        self.segment = model.segments[k - 1].eval()
        self.head = model.exits[k - 1].eval()

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            h = self.segment(x)
            logits, _ = self.head(h)
        return h, logits

    @staticmethod
    def probs(logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.float(), dim=-1)


def make_input(shape: tuple[int, ...], batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, *shape), dtype=np.float32)


def cpu_seconds(pid: int) -> float:
    """CPU time of every live thread of ``pid`` (nanosecond schedstat); 0 if the process is gone."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _exit_with_parent(parent: int) -> None:
    """Exit this process as soon as its parent is gone (a killed driver leaves no workers behind)."""

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


# ---------------------------------------------------------------------------- torch.distributed.rpc
_STAGES: list[Stage] = []  # this worker's stage of every model served
_NEXT: str | None = None


@rpc.functions.async_execution
def rpc_forward(m: int, x: torch.Tensor) -> torch.futures.Future:
    """Worker k: segment k + exit k of model ``m``, then the next worker's answer (or this one's, on the last)."""
    stage = _STAGES[m]
    h, logits = stage(x)
    if _NEXT is None:
        fut: torch.futures.Future = torch.futures.Future()
        fut.set_result((Stage.probs(logits), stage.k))
        return fut
    return rpc.rpc_async(_NEXT, rpc_forward, args=(m, h))


def rpc_pid() -> tuple[int, int]:
    return os.getpid(), torch.get_num_threads()


def _rpc_options(port: int, tcp_only: bool) -> rpc.TensorPipeRpcBackendOptions:
    return rpc.TensorPipeRpcBackendOptions(
        init_method=f"tcp://127.0.0.1:{port}",
        num_worker_threads=16,
        rpc_timeout=120.0,
        _transports=["uv"] if tcp_only else None,
        _channels=["basic"] if tcp_only else None,
    )


def rpc_worker_main(k: int, port: int, checkpoints: list[str], tcp_only: bool, parent: int) -> int:
    global _NEXT
    _exit_with_parent(parent)
    _STAGES[:] = [Stage(c, k) for c in checkpoints]
    _NEXT = f"w{k + 1}" if k < WORLD - 1 else None
    rpc.init_rpc(f"w{k}", rank=k, world_size=WORLD, rpc_backend_options=_rpc_options(port, tcp_only))
    rpc.shutdown()  # graceful: returns once every participant has shut down
    return 0


# ---------------------------------------------------------------------------- drivers (one process per peer)
class Driver(abc.ABC):
    """A peer's chains (one per model) and its client.

    ``infer(m, x)`` sends one request to model ``m``'s chain and returns (probs (B, K), exit node (B,)).
    ``stage_pids[m]``: the 4 processes computing model ``m``, in chain order."""

    stage_pids: list[list[int]]
    infra_pids: list[int]

    @abc.abstractmethod
    def start(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def infer(self, m: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    @abc.abstractmethod
    def many(self, m: int, xs: list[np.ndarray], concurrency: int) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...


class DistreeDriver(Driver):
    """One ``LocalCluster`` per model (its own 4 ``distree serve`` processes), ``ClusterClient`` on node 1."""

    def __init__(self, spec_paths: list[Path], work: Path) -> None:
        from distree.runtime import load_spec

        self.specs = [load_spec(p) for p in spec_paths]
        self.work = work
        self.clusters: list[Any] = []
        self.clients: list[Any] = []
        self.stage_pids = []
        self.infra_pids = []

    def start(self) -> dict[str, Any]:
        from distree.runtime import ClusterClient, LocalCluster

        for i, spec in enumerate(self.specs):
            cluster = LocalCluster(spec, log_dir=self.work / f"distree-logs-{i}")
            self.clusters.append(cluster)
            cluster.start(timeout_s=300)
            self.stage_pids.append([cluster.procs[(k, 1)].pid for k in range(1, spec.num_nodes + 1)])
            self.clients.append(ClusterClient(spec.nodes[0].address))
        threads = [s.threads for s in self.specs for _ in s.nodes]
        return {"threads": threads, "transport": "gRPC (grpc.aio), TCP loopback"}

    def infer(self, m: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = self.clients[m].infer(x, rpc_timeout_s=120)
        return r.probs, r.exit_node

    def many(self, m: int, xs: list[np.ndarray], concurrency: int) -> None:
        out = self.clients[m].infer_many(xs, concurrency=concurrency, rpc_timeout_s=120)
        bad = [o for o in out if not hasattr(o, "probs")]
        if bad:
            raise PeerError(f"{len(bad)} of {len(xs)} distree requests failed: {bad[0]}")

    def close(self) -> None:
        for c in self.clients:
            c.close()
        for cl in self.clusters:
            cl.stop()


class RpcDriver(Driver):
    """4 worker processes (ranks 1-4), each holding its stage of every model; this process is rank 0."""

    def __init__(self, spec_paths: list[Path], work: Path, tcp_only: bool) -> None:
        self.checkpoints = _checkpoints(spec_paths)
        self.work = work
        self.tcp_only = tcp_only
        self.procs: list[subprocess.Popen] = []
        self.joined = False

    def start(self) -> dict[str, Any]:
        from distree.runtime.cluster import free_ports

        port = free_ports(1)[0]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TP_SOCKET_IFNAME": "lo", "PYTHONUNBUFFERED": "1"}
        name = "torch-rpc-tcp" if self.tcp_only else "torch-rpc"
        for k in range(1, WORLD):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--rpc-worker", str(k), "--rpc-port", str(port)]
            cmd += ["--checkpoint", ",".join(self.checkpoints), "--parent", str(os.getpid())]
            if self.tcp_only:
                cmd.append("--tcp-only")
            log = open(self.work / f"{name}-w{k}.log", "ab")  # noqa: SIM115 - the worker owns it until it exits
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
            log.close()
        self.stage_pids = [[p.pid for p in self.procs]] * len(self.checkpoints)
        self.infra_pids = []
        rpc.init_rpc("client", rank=0, world_size=WORLD, rpc_backend_options=_rpc_options(port, self.tcp_only))
        self.joined = True
        threads = [rpc.rpc_sync(f"w{k}", rpc_pid)[1] for k in range(1, WORLD)]
        transport = "TensorPipe uv (TCP) + basic channel" if self.tcp_only else "TensorPipe, default transports"
        return {"threads": threads, "transport": transport}

    def infer(self, m: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, k = rpc.rpc_sync("w1", rpc_forward, args=(m, torch.from_numpy(x)), timeout=120)
        return probs.numpy(), np.full(x.shape[0], k, dtype=np.int32)

    def many(self, m: int, xs: list[np.ndarray], concurrency: int) -> None:
        sem = threading.BoundedSemaphore(concurrency)
        futs = []
        for x in xs:
            sem.acquire()
            f = rpc.rpc_async("w1", rpc_forward, args=(m, torch.from_numpy(x)), timeout=120)
            f.add_done_callback(lambda _f: sem.release())
            futs.append(f)
        torch.futures.wait_all(futs)

    def close(self) -> None:
        if self.joined:
            with contextlib.suppress(Exception):
                rpc.shutdown()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


def _ray_stage_class(ray: Any) -> Any:
    @ray.remote(num_cpus=0)
    class RayStage:
        def __init__(self, checkpoints: list[str], k: int, nxt: Any) -> None:
            torch.set_num_threads(1)
            self.stages = [Stage(c, k) for c in checkpoints]
            self.nxt = nxt

        def pid(self) -> tuple[int, int]:
            return os.getpid(), torch.get_num_threads()

        async def forward(self, m: int, x: np.ndarray) -> tuple[np.ndarray, int]:
            stage = self.stages[m]
            h, logits = stage(torch.from_numpy(x if x.flags.writeable else x.copy()))
            if self.nxt is None:
                return Stage.probs(logits).numpy(), stage.k
            return await self.nxt.forward.remote(m, h.numpy())

    return RayStage


class RayDriver(Driver):
    """A local Ray instance and 4 async actors, each holding its stage of every model."""

    def __init__(self, spec_paths: list[Path], work: Path) -> None:
        self.checkpoints = _checkpoints(spec_paths)
        self.work = work
        self.started = False

    def start(self) -> dict[str, Any]:
        import ray

        self.ray = ray
        os.environ["OMP_NUM_THREADS"] = "1"
        # inside the run's folder (removed with it even if this driver is killed) unless that path is too long
        # for the Unix sockets Ray creates below it (108 bytes in all)
        base = self.work if len(str(self.work.resolve())) <= 40 else Path(tempfile.gettempdir())
        self.tmp = tmp = Path(tempfile.mkdtemp(prefix="r", dir=base))
        ray.init(
            num_cpus=os.cpu_count() or 1,
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=256 << 20,
            _temp_dir=str(tmp),
            logging_level="ERROR",
        )
        self.started = True
        cls = _ray_stage_class(ray)
        nxt = None
        actors = []
        for k in range(4, 0, -1):
            nxt = cls.remote(self.checkpoints, k, nxt)
            actors.insert(0, nxt)
        self.actors = actors
        self.head = actors[0]
        info = ray.get([a.pid.remote() for a in actors], timeout=300)
        self.stage_pids = [[p for p, _ in info]] * len(self.checkpoints)
        self.infra_pids = []
        with contextlib.suppress(Exception):  # ray's own processes (gcs, raylet, ...): private API, best effort
            node = ray._private.worker._global_node
            self.infra_pids = [pi.process.pid for ps in node.all_processes.values() for pi in ps]
        return {"threads": [t for _, t in info], "transport": f"Ray {ray.__version__} actor calls"}

    def infer(self, m: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, k = self.ray.get(self.head.forward.remote(m, x), timeout=120)
        return probs, np.full(x.shape[0], k, dtype=np.int32)

    def many(self, m: int, xs: list[np.ndarray], concurrency: int) -> None:
        ray = self.ray
        inflight: list[Any] = []
        for x in xs:
            if len(inflight) >= concurrency:
                done, inflight = ray.wait(inflight, num_returns=1)
                ray.get(done)
            inflight.append(self.head.forward.remote(m, x))
        ray.get(inflight, timeout=300)

    def close(self) -> None:
        import shutil

        if self.started:
            self.ray.shutdown()
        if getattr(self, "tmp", None) is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(MSG + json.dumps(obj) + "\n")
    sys.stdout.flush()


def driver_main(name: str, spec_paths: list[Path], work: Path) -> int:
    """Start peer ``name``, then answer commands (JSON lines on stdin) until ``quit`` or end of input."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    torch.set_num_threads(1)
    shapes = [input_shape_of(p) for p in spec_paths]
    drv: Driver
    if name == "distree":
        drv = DistreeDriver(spec_paths, work)
    elif name in ("torch-rpc", "torch-rpc-tcp"):
        drv = RpcDriver(spec_paths, work, tcp_only=name == "torch-rpc-tcp")
    elif name == "ray":
        drv = RayDriver(spec_paths, work)
    else:
        _emit({"error": f"unknown peer {name!r}; choose from {', '.join(PEERS)}"})
        return 2
    try:
        try:
            info = drv.start()
        except BaseException:
            _emit({"error": f"{name} did not start:\n{traceback.format_exc(limit=8)}", "pids": _pids(drv)})
            raise
        _emit({"ready": True, **info, **_pids(drv), "driver_pid": os.getpid()})
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["cmd"] == "quit":
                break
            try:
                _emit(_handle(drv, cmd, shapes[int(cmd["model"])]))
            except Exception:  # noqa: BLE001 - reported to the orchestrator, which stops the run
                _emit({"error": f"{name} failed {cmd['cmd']}:\n{traceback.format_exc(limit=8)}"})
    finally:
        drv.close()
    return 0


def _checkpoints(spec_paths: list[Path]) -> list[str]:
    from distree.runtime import load_spec

    return [str(load_spec(p).checkpoint) for p in spec_paths]


def input_shape_of(spec_path: Path) -> tuple[int, ...]:
    from distree.checkpoint import read_sidecar
    from distree.runtime import load_spec

    return tuple(int(s) for s in read_sidecar(load_spec(spec_path).checkpoint)["input_shape"])


def _pids(drv: Driver) -> dict[str, list[int]]:
    return {"stage_pids": list(getattr(drv, "stage_pids", [])), "infra_pids": list(getattr(drv, "infra_pids", []))}


def _handle(drv: Driver, cmd: dict[str, Any], shape: tuple[int, ...]) -> dict[str, Any]:
    b, m = int(cmd["batch"]), int(cmd["model"])
    if cmd["cmd"] == "check":
        out = []
        for i in range(int(cmd["n"])):
            p, e = drv.infer(m, make_input(shape, b, int(cmd["seed"]) + i))
            out.append({"probs": np.asarray(p, np.float32).tolist(), "exit": np.asarray(e).tolist()})
        return {"answers": out}
    x = make_input(shape, b, 12345)
    if cmd["cmd"] == "lat":
        for _ in range(int(cmd.get("warm", 3))):
            drv.infer(m, x)
        lat = []
        for _ in range(int(cmd["n"])):
            t = time.perf_counter()
            drv.infer(m, x)
            lat.append(time.perf_counter() - t)
        return {"lat_s": lat}
    if cmd["cmd"] == "tput":
        c = int(cmd["concurrency"])
        drv.many(m, [x] * c, c)
        t = time.perf_counter()
        drv.many(m, [x] * int(cmd["n"]), c)
        return {"wall_s": time.perf_counter() - t}
    raise ValueError(f"unknown command {cmd['cmd']!r}")


# ---------------------------------------------------------------------------- orchestration
class PeerProc:
    """One peer's driver process, driven over JSON lines; always stopped by ``close``."""

    def __init__(self, name: str, spec_paths: list[Path], work: Path) -> None:
        self.name = name
        self.work = work
        self.log_path = work / f"{name}-driver.log"
        self._log = open(self.log_path, "a")  # noqa: SIM115 - closed in close()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--driver", name]
        cmd += ["--spec", ",".join(str(p) for p in spec_paths), "--work", str(work)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.msgs: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.info: dict[str, Any] = {}
        self.pids: list[int] = []
        threading.Thread(target=self._read, daemon=True, name=f"{name}-reader").start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(MSG):
                self.msgs.put(json.loads(line[len(MSG) :]))
            else:
                with contextlib.suppress(ValueError):
                    self._log.write(line)
        self.msgs.put(None)

    def _get(self, timeout_s: float, what: str) -> dict[str, Any]:
        try:
            m = self.msgs.get(timeout=timeout_s)
        except queue.Empty:
            raise PeerError(f"{self.name}: no answer to {what} within {timeout_s:.0f} s{self.log_tail()}") from None
        if m is None:
            raise PeerError(f"{self.name}: driver exited (code {self.proc.poll()}) during {what}{self.log_tail()}")
        stage = [q for chain in m.get("stage_pids", []) for q in chain]
        self.pids = sorted(set(self.pids) | set(stage) | set(m.get("infra_pids", [])))
        if "error" in m:
            raise PeerError(f"{self.name}: {m['error']}{self.log_tail()}")
        return m

    def log_tail(self) -> str:
        self._log.flush()
        tail = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.is_file() else ""
        return f"\n--- {self.log_path} (tail) ---\n{tail}" if tail.strip() else ""

    def wait_ready(self, timeout_s: float = 300.0) -> dict[str, Any]:
        self.info = self._get(timeout_s, "start-up")
        return self.info

    def call(self, cmd: dict[str, Any], timeout_s: float = 900.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise PeerError(f"{self.name}: driver is gone ({e}){self.log_tail()}") from e
        return self._get(timeout_s, cmd["cmd"])

    def stage_pids(self, m: int) -> list[int]:
        """The 4 processes computing model ``m`` (chain order)."""
        return list(self.info["stage_pids"][m])

    def request_quit(self) -> None:
        """Ask the driver to stop its peer (and close its stdin: a driver also stops at end of input)."""
        if self.proc.poll() is None and self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError, OSError, ValueError):
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()

    def close(self, timeout_s: float = 30.0) -> list[int]:
        """Stop the driver (which stops its peer); kill whatever is left. Returns pids that survived."""
        self.request_quit()
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything left in the driver's group
        end = time.monotonic() + 10
        while any(pid_alive(p) for p in self.pids) and time.monotonic() < end:
            time.sleep(0.2)
        for p in self.pids:
            if pid_alive(p):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
        time.sleep(0.2)
        self._log.close()
        return [p for p in self.pids if pid_alive(p)]


def start_peers(
    names: list[str], spec_paths: list[Path], work: Path, stack: contextlib.ExitStack, *, parallel: bool = False
) -> list[PeerProc]:
    """Start the drivers, one after the other unless ``parallel`` (start-up is CPU-heavy); ``stack`` stops
    them all at once (on errors and interrupts too, also while one is still starting)."""
    started: list[PeerProc] = []
    stack.callback(close_all, started)
    if parallel:
        started += [PeerProc(n, spec_paths, work) for n in names]
        for p in started:
            p.wait_ready()
        return list(started)
    for name in names:
        t = time.monotonic()
        p = PeerProc(name, spec_paths, work)
        started.append(p)
        p.wait_ready()
        p.info["start_s"] = time.monotonic() - t
    return list(started)


def close_all(procs: list[PeerProc]) -> None:
    """Ask every driver to quit first (they stop their peers in parallel), then wait for and kill what is left."""
    for p in procs:
        p.request_quit()
    for p in procs:
        t = time.monotonic()
        left = p.close()
        p.info["close_s"] = time.monotonic() - t
        if left:
            print(f"WARNING: {p.name}: processes {left} survived SIGKILL", file=sys.stderr)


def compare_answers(answers: dict[str, list[dict[str, Any]]], num_nodes: int = 4) -> None:
    """Raise ``PeerError`` unless every peer answered every request like the first peer (argmax and probs)."""
    names = list(answers)
    ref_name = names[0]
    ref = answers[ref_name]
    for name in names:
        got = answers[name]
        if len(got) != len(ref):
            raise PeerError(f"{name} answered {len(got)} requests, {ref_name} {len(ref)}")
        for i, (a, r) in enumerate(zip(got, ref, strict=True)):
            pa, pr = np.asarray(a["probs"], np.float32), np.asarray(r["probs"], np.float32)
            if set(a["exit"]) != {num_nodes}:
                raise PeerError(f"{name} answered request {i} at node(s) {sorted(set(a['exit']))}, not {num_nodes}")
            if pa.shape != pr.shape:
                raise PeerError(f"{name} answered request {i} with shape {pa.shape}, {ref_name} with {pr.shape}")
            diff = np.flatnonzero(pa.argmax(-1) != pr.argmax(-1))
            if diff.size:
                raise PeerError(
                    f"{name} and {ref_name} disagree on request {i}, rows {diff.tolist()}: argmax "
                    f"{pa.argmax(-1)[diff].tolist()} vs {pr.argmax(-1)[diff].tolist()}; "
                    "the peers compute different work"
                )
            err = float(np.abs(pa - pr).max())
            if err > CHECK_ATOL:
                raise PeerError(f"{name} and {ref_name} probabilities differ by {err:.2e} on request {i}")


@torch.no_grad()
def in_process_s(checkpoint: str, shape: tuple[int, ...], batch: int, n: int) -> tuple[float, float]:
    """Median wall time and median CPU time (this thread) of the 4 segments + exits back to back in this
    process (1 torch thread). The CPU time is what the stages must spend at least; unlike the wall time it
    does not grow when other processes hold the CPUs."""
    stages = [Stage(checkpoint, k) for k in range(1, 5)]
    x = torch.from_numpy(make_input(shape, batch, 12345))
    ts, cs = [], []
    for i in range(n + 2):
        t, c = time.perf_counter(), time.thread_time()
        h = x
        for s in stages:
            h, logits = s(h)
        Stage.probs(logits)
        if i >= 2:
            ts.append(time.perf_counter() - t)
            cs.append(time.thread_time() - c)
    return float(np.median(ts)), float(np.median(cs))


def idle_cpu(procs: list[PeerProc], seconds: float) -> dict[str, float]:
    """CPU (in cores) that each peer's processes (driver, stages, Ray's own) use while no request is sent."""
    pids = {p.name: [int(p.info["driver_pid"]), *p.pids] for p in procs}
    c0 = {n: sum(cpu_seconds(q) for q in ps) for n, ps in pids.items()}
    time.sleep(seconds)
    return {n: (sum(cpu_seconds(q) for q in ps) - c0[n]) / seconds for n, ps in pids.items()}


def block_sizes(inproc_s: float, knobs: dict[str, Any], concurrency: int) -> tuple[int, int]:
    """Requests per latency block and per throughput block, from a rough cost of one request."""
    est = 2.0 * inproc_s  # a request's time on this machine, roughly (transport, contention)
    n_lat = int(np.clip(round(knobs["lat_budget_s"] / est), 5, knobs["max_lat"]))
    n_tput = int(np.clip(round(knobs["tput_budget_s"] * 2 / est), 2 * concurrency, knobs["max_tput"]))
    return n_lat, n_tput


def cross_check(procs: list[PeerProc], m: int, batches: list[int], n: int = 3) -> dict[str, Any]:
    """Every peer answers the same seeded requests of model ``m``; raises ``PeerError`` unless all agree."""
    out = {}
    for b in sorted(set(batches)):
        answers = {
            p.name: p.call({"cmd": "check", "model": m, "batch": b, "seed": 1000 * b, "n": n})["answers"] for p in procs
        }
        compare_answers(answers)
        out[str(b)] = answers
    return out


def measure(
    procs: list[PeerProc],
    m: int,
    batch: int,
    inproc: tuple[float, float],
    knobs: dict[str, Any],
    concurrency: int,
    log: Any,
) -> dict[str, Any]:
    """Interleaved rounds: a latency block of every peer in turn, then a throughput block of each."""
    n_lat, n_tput = block_sizes(inproc[1], knobs, concurrency)
    cfg: dict[str, Any] = {"batch": batch, "inproc_s": inproc[0], "inproc_cpu_s": inproc[1], "peers": {}}
    cfg.update(n_lat=n_lat, n_tput=n_tput)
    for p in procs:
        cfg["peers"][p.name] = {"lat_s": [], "tput_rps": [], "stage_cpu_s": [], "client_cpu_s": []}
    rounds = int(knobs["rounds"])
    for r in range(rounds):
        order = procs[r % len(procs) :] + procs[: r % len(procs)]
        for p in order:
            cfg["peers"][p.name]["lat_s"] += p.call({"cmd": "lat", "model": m, "batch": batch, "n": n_lat})["lat_s"]
        for p in order:
            pids, drv = p.stage_pids(m), int(p.info["driver_pid"])
            c0, d0 = [cpu_seconds(q) for q in pids], cpu_seconds(drv)
            cmd = {"cmd": "tput", "model": m, "batch": batch, "n": n_tput, "concurrency": concurrency}
            wall = p.call(cmd)["wall_s"]
            c1, d1 = [cpu_seconds(q) for q in pids], cpu_seconds(drv)
            d = cfg["peers"][p.name]
            d["tput_rps"].append(n_tput / wall)
            # the CPU counters also cover the untimed window before the block: per request over n_tput + concurrency
            d["stage_cpu_s"].append([(y - x) / (n_tput + concurrency) for x, y in zip(c0, c1, strict=True)])
            d["client_cpu_s"].append((d1 - d0) / (n_tput + concurrency))
        log(f"  batch {batch}: round {r + 1}/{rounds} done")
    return cfg


def run(
    models: list[str],
    peers: list[str],
    batches: list[int],
    knobs: dict[str, Any],
    *,
    concurrency: int,
    tmp: Path,
    log: Any = print,
) -> list[dict[str, Any]]:
    """All peers up at once, each serving every model; per model: answers cross-checked, then timed."""
    from distree.runtime import load_spec

    specs = []
    for mname in models:
        work = tmp / mname
        work.mkdir(parents=True, exist_ok=True)
        specs.append(make_cluster_files(mname, work))
    results = []
    with contextlib.ExitStack() as stack:
        procs = start_peers(peers, specs, tmp, stack)
        log("started " + ", ".join(f"{p.name} in {p.info['start_s']:.0f} s" for p in procs))
        time.sleep(2.0)
        idle = idle_cpu(procs, 5.0)
        log("idle CPU (cores) while no peer serves: " + ", ".join(f"{n} {c:.3f}" for n, c in idle.items()))
        for m, mname in enumerate(models):
            res: dict[str, Any] = {"model": mname, "configs": []}
            res["peers"] = {p.name: {k: p.info.get(k) for k in ("threads", "transport", "start_s")} for p in procs}
            for n, c in idle.items():
                res["peers"][n]["idle_cpu_cores"] = c
            res["check"] = cross_check(procs, m, batches)
            log(f"[{mname}] answers identical across peers (argmax, probabilities within {CHECK_ATOL}, node 4)")
            ckpt, shape = str(load_spec(specs[m]).checkpoint), input_shape_of(specs[m])
            for b in batches:
                res["configs"].append(measure(procs, m, b, in_process_s(ckpt, shape, b, 5), knobs, concurrency, log))
            results.append(res)
    return results


# ---------------------------------------------------------------------------- report
def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for res in results:
        for cfg in res["configs"]:
            peers = cfg["peers"]
            med = {n: float(np.median(d["lat_s"])) for n, d in peers.items()}
            tput = {n: float(np.median(d["tput_rps"])) for n, d in peers.items()}
            best_lat, best_tput = min(med.values()), max(tput.values())
            for n, d in peers.items():
                stage = np.asarray(d["stage_cpu_s"])  # (rounds, 4)
                stage_sum = float(np.median(stage.sum(axis=1)))
                rows.append(
                    {
                        "model": res["model"],
                        "batch": cfg["batch"],
                        "peer": n,
                        "median_ms": med[n] * 1e3,
                        "p99_ms": float(np.percentile(d["lat_s"], 99)) * 1e3,
                        "n_lat": len(d["lat_s"]),
                        "lat_x_best": med[n] / best_lat,
                        "rps": tput[n],
                        "images_s": tput[n] * cfg["batch"],
                        "tput_x_best": tput[n] / best_tput,
                        "stage_cpu_ms": stage_sum * 1e3,
                        "beyond_compute_ms_per_hop": (stage_sum - cfg["inproc_cpu_s"]) * 1e3 / 4,
                        "client_cpu_ms": float(np.median(d["client_cpu_s"])) * 1e3,
                        "inproc_ms": cfg["inproc_s"] * 1e3,
                        "inproc_cpu_ms": cfg["inproc_cpu_s"] * 1e3,
                    }
                )
    return rows


def print_table(rows: list[dict[str, Any]], concurrency: int) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"chain of 4 processes: latency at concurrency 1, throughput at concurrency {concurrency}")
    cols = [
        ("model", "left"),
        ("batch", "right"),
        ("peer", "left"),
        ("median ms", "right"),
        ("p99 ms", "right"),
        ("n", "right"),
        ("lat / best", "right"),
        ("req/s", "right"),
        ("img/s", "right"),
        ("tput / best", "right"),
        ("stage CPU ms/req", "right"),
        ("beyond compute ms/hop", "right"),
        ("client CPU ms/req", "right"),
    ]
    for c, j in cols:
        t.add_column(c, justify=j)  # type: ignore[arg-type]
    last = None
    for r in rows:
        key = (r["model"], r["batch"])
        if last is not None and key != last:
            t.add_section()
        if key != last:
            row = [r["model"], str(r["batch"]), "in-process (1 process)", f"{r['inproc_ms']:.2f}", *[""] * 6]
            t.add_row(*row, f"{r['inproc_cpu_ms']:.2f}", "", "")
        last = key
        t.add_row(
            "",
            "",
            r["peer"],
            f"{r['median_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            str(r["n_lat"]),
            f"{r['lat_x_best']:.2f}",
            f"{r['rps']:.1f}",
            f"{r['images_s']:.0f}",
            f"{r['tput_x_best']:.2f}",
            f"{r['stage_cpu_ms']:.2f}",
            f"{r['beyond_compute_ms_per_hop']:.2f}",
            f"{r['client_cpu_ms']:.2f}",
        )
    Console(width=200).print(t)


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


# ---------------------------------------------------------------------------- profiling one stage
def profile_stage(
    peer: str, k: int, model: str, batch: int, seconds: float, concurrency: int, tmp: Path, gil: bool = False
) -> dict[str, Any]:
    """py-spy (all threads, native frames where it can) of stage ``k`` of ``peer`` under load; top frames.

    py-spy samples wall time: a thread waiting for the CPU or blocked in a queue counts where it waits.
    With ``gil`` only samples of the thread holding the GIL count: the Python work (torch kernels and
    waits release the GIL), which is what a hop costs beyond compute in a Python node."""
    import shutil

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise SystemExit("py-spy is not installed: pip install -e '.[bench]'")
    work = tmp / f"profile-{model}"
    work.mkdir(parents=True, exist_ok=True)
    spec_path = make_cluster_files(model, work)
    out: dict[str, Any] = {"peer": peer, "stage": k, "model": model, "batch": batch, "gil_only": gil}
    with contextlib.ExitStack() as stack:
        (p,) = start_peers([peer], [spec_path], work, stack)
        pid = p.stage_pids(0)[k - 1]
        tput = {"cmd": "tput", "model": 0, "batch": batch, "concurrency": concurrency}
        p.call({**tput, "n": 4 * concurrency})  # warm
        raw = work / "profile.txt"
        cmd = [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200"]
        cmd += ["--format", "raw", "--output", str(raw), "--nonblocking", "--threads", "--native"]
        if gil:
            cmd.append("--gil")
        holder: dict[str, Any] = {}

        def load() -> None:
            end = time.monotonic() + seconds + 3
            n = 0
            while time.monotonic() < end:
                p.call({**tput, "n": 8 * concurrency})
                n += 8 * concurrency
            holder["n"] = n

        th = threading.Thread(target=load)
        th.start()
        time.sleep(1.0)
        c0 = cpu_seconds(pid)
        t0 = time.monotonic()
        spy_run = subprocess.run(cmd, capture_output=True, text=True)
        if spy_run.returncode != 0 and "--native" in cmd:  # some kernels/containers refuse native unwinding
            cmd.remove("--native")
            spy_run = subprocess.run(cmd, capture_output=True, text=True)
        cpu = cpu_seconds(pid) - c0
        wall = time.monotonic() - t0
        th.join()
        if spy_run.returncode != 0:
            raise PeerError(f"py-spy failed: {spy_run.stderr[-2000:]}")
        out.update(cpu_util=cpu / wall, requests=holder.get("n", 0), native="--native" in cmd)
        text = raw.read_text()
        out.update(summarise_stacks(text), collapsed=text)
    return out


# Where a sample of a stage process is, by the innermost frame that matches (first rule wins).
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("compute (segment + exit)", ("torch/nn/", "NodeCore._compute", "Stage.__call__", "wrn.py")),
    ("protobuf + tensor (de)serialisation", ("SerializeToString", "FromString", "to_proto", "from_proto", "_pb2")),
    ("policy + answers", ("distree/policies/", "_answer", "softmax")),
    ("metrics", ("prometheus_client",)),
    ("grpc calls (Python side of grpc.aio)", ("grpc/aio/", "grpc/_", "_cygrpc")),
    ("node logic (batch, forward, deadlines)", ("distree/runtime/",)),
    ("thread hand-off", ("concurrent/futures/", "_write_to_self", "run_in_executor", "threading.py")),
    ("event loop waiting (epoll)", ("selectors.py",)),
    ("event loop (scheduling callbacks)", ("asyncio/",)),
    ("torch.distributed.rpc", ("torch/distributed/", "rpc_forward")),
    ("ray", ("ray/", "_raylet")),
)


def categorise(stack: list[str]) -> str:
    for frame in reversed(stack):
        for name, keys in CATEGORIES:
            if any(k in frame for k in keys):
                return name
    return "other"


def summarise_stacks(text: str, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample counts per frame of py-spy's raw (collapsed) output, and per category."""
    selfc: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    cats: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        c = int(n)
        frames = stack.split(";")
        threads[frames[0]] += c
        total += c
        selfc[frames[-1]] += c
        cats[categorise(frames[1:])] += c
        for f in set(frames[1:]):
            incl[f] += c
    return {
        "samples": total,
        "categories": cats.most_common(),
        "threads": threads.most_common(),
        "self": selfc.most_common(top),
        "inclusive": incl.most_common(top),
    }


# ---------------------------------------------------------------------------- entry
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--driver", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--rpc-worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--rpc-port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", help=argparse.SUPPRESS)
    ap.add_argument("--parent", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--tcp-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--models", default="wrn-16-2,wrn-16-8")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of blocks")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="3 rounds of short blocks (a few minutes)")
    ap.add_argument("--out", type=Path, help="write the raw numbers as JSON")
    ap.add_argument("--plot", type=Path, help="draw latency and throughput per configuration as a PNG")
    ap.add_argument("--replot", type=Path, metavar="JSON", help="only draw --plot from an earlier run's --out")
    ap.add_argument("--profile", metavar="PEER:K", help="py-spy stage K of PEER under load instead of the table")
    ap.add_argument("--profile-seconds", type=float, default=20.0)
    ap.add_argument("--profile-batch", type=int, default=1)
    ap.add_argument("--profile-gil", action="store_true", help="count only samples holding the GIL (Python work)")
    a = ap.parse_args(argv)
    if a.driver:
        return driver_main(a.driver, [Path(p) for p in a.spec.split(",")], a.work)
    if a.rpc_worker:
        return rpc_worker_main(a.rpc_worker, a.rpc_port, a.checkpoint.split(","), a.tcp_only, a.parent)
    if a.replot:
        if not a.plot:
            ap.error("--replot needs --plot FILE.png")
        d = json.loads(a.replot.read_text())
        plot_rows(d["rows"], d["meta"], a.plot)
        print(f"plot: {a.plot}")
        return 0

    def interrupted(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    torch.set_num_threads(1)
    if a.profile:
        peer, _, k = a.profile.partition(":")
        model = a.models.split(",")[0]
        with tempfile.TemporaryDirectory(prefix="distree-peers-") as d:
            prof = profile_stage(
                peer, int(k or 2), model, a.profile_batch, a.profile_seconds, a.concurrency, Path(d), a.profile_gil
            )
        print(json.dumps({k: v for k, v in prof.items() if k not in ("self", "inclusive", "collapsed")}, indent=1))
        for what in ("categories", "self"):
            print(f"\n{what} samples (of {prof['samples']}):")
            for f, c in prof[what]:
                print(f"{100 * c / max(prof['samples'], 1):6.1f}%  {f}")
        if a.out:
            a.out.write_text(json.dumps(prof, indent=1))
        return 0

    peers = [p for p in a.peers.split(",") if p]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        ap.error(f"unknown peer(s) {unknown}; choose from {', '.join(PEERS)}")
    skipped = {}
    if "ray" in peers and importlib.util.find_spec("ray") is None:
        peers.remove("ray")
        skipped["ray"] = "ray is not installed (pip install -e '.[bench]' installs it)"
        print(f"ray peer skipped: {skipped['ray']}")
    models = [m for m in a.models.split(",") if m]
    batches = [int(b) for b in a.batches.split(",") if b]
    if a.quick:
        knobs = dict(rounds=3, lat_budget_s=0.6, tput_budget_s=1.5, max_lat=20, max_tput=64)
    else:
        knobs = dict(rounds=a.rounds, lat_budget_s=2.0, tput_budget_s=5.0, max_lat=60, max_tput=320)
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    import grpc

    versions["grpcio"] = grpc.__version__
    if "ray" in peers:
        import importlib.metadata as md

        versions["ray"] = md.version("ray")
    meta = {
        "machine": machine(),
        "versions": versions,
        "threads_per_process": 1,
        "loadavg_start": loadavg(),
        "peers": peers,
        "skipped": skipped,
        "concurrency": a.concurrency,
        **knobs,
    }
    print("distree runtime against its peers")
    print(f"machine: {meta['machine']}; {', '.join(f'{k} {v}' for k, v in versions.items())}")
    print(
        f"setup: 4 stage processes per peer + 1 client process per peer, all peers up at once, unpinned; "
        f"1 torch intra-op thread per process; last-exit (every request crosses all 4 stages); load average "
        f"{meta['loadavg_start']}"
    )
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="distree-peers-") as d:
        results = run(models, peers, batches, knobs, concurrency=a.concurrency, tmp=Path(d))
    meta["loadavg_end"] = loadavg()
    meta["duration_s"] = time.monotonic() - t0
    rows = summarise(results)
    print_table(rows, a.concurrency)
    print(
        f"lat / best: median latency over the lowest peer's; tput / best: throughput over the highest's. "
        f"stage CPU: the 4 stage processes' CPU per request under load (in-process row: CPU time of the same "
        f"work in one thread); beyond compute: (stage CPU - in-process CPU) / 4. "
        f"Load average {meta['loadavg_start']} -> {meta['loadavg_end']}; {meta['duration_s']:.0f} s."
    )
    if a.out:
        a.out.write_text(json.dumps({"meta": meta, "rows": rows, "results": results}, indent=1))
        print(f"raw numbers: {a.out}")
    if a.plot:
        plot_rows(rows, meta, a.plot)
        print(f"plot: {a.plot}")
    return 0


def plot_rows(rows: list[dict], meta: dict, path: Path) -> None:
    """Median latency (bars, p99 as a tick) and throughput at the concurrency of the run, per model and
    batch size, one bar per peer; the in-process time as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = sorted({(r["model"], r["batch"]) for r in rows}, key=lambda c: (c[0], c[1]))
    peers = [p for p in meta.get("peers", []) if any(r["peer"] == p for r in rows)]
    fig, axes = plt.subplots(2, len(configs), figsize=(3.2 * len(configs), 6.4), dpi=110, squeeze=False)
    for j, (model, batch) in enumerate(configs):
        got = {r["peer"]: r for r in rows if r["model"] == model and r["batch"] == batch}
        x = np.arange(len(peers))
        lat, tput = axes[0][j], axes[1][j]
        lat.bar(x, [got[p]["median_ms"] for p in peers], color=[f"C{i}" for i in range(len(peers))])
        lat.plot(x, [got[p]["p99_ms"] for p in peers], "k_", ms=14, mew=1.5, label="p99")
        lat.axhline(next(iter(got.values()))["inproc_ms"], color="grey", ls="--", lw=1, label="in-process")
        lat.set_title(f"{model}, batch {batch}", fontsize=9)
        tput.bar(x, [got[p]["rps"] for p in peers], color=[f"C{i}" for i in range(len(peers))])
        for ax in (lat, tput):
            ax.set_xticks(x, peers, rotation=30, fontsize=7)
        if j == 0:
            lat.set_ylabel("latency at concurrency 1 (ms)")
            tput.set_ylabel(f"requests/s at concurrency {meta.get('concurrency', 16)}")
            lat.legend(fontsize=7)
    fig.suptitle(
        f"A chain of 4 processes per peer; {meta.get('machine', '')}; load {meta.get('loadavg_start')}"
        f" -> {meta.get('loadavg_end')}",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
