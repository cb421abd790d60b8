"""Driver shards on a Ray cluster (``--cluster ADDRESS``): the same driver processes, on other nodes.

One node actor per node, placed by a ``STRICT_SPREAD`` placement group (one bundle per node asked
for), each runs an ordinary ``DriverFleet`` of its node's share of the shard plans; the shard
contract (``ShardPlan`` in, driver records out) is unchanged, so the recording, every report,
diagnose, compare and diff see the records as if local drivers had sent them. The harness polls
every actor four times a second for the records since its last poll.

One clock: each node's offset to the harness's clock is measured with round trips (the smallest
of ``CLOCK_PROBES`` kept; its half is the uncertainty) and each node's plans start at the same
instant of the harness's clock, shifted into the node's. A node lost mid-run is an event
(``node-lost``): the run is degraded from that second — its share of the load is not sent again
elsewhere (the offered load is what was sent) — and nothing is left running on the others.

Ray is optional (``pip install 'fastapi-harness[ray]'``); every node needs fastapi-harness
installed, as this machine has it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from harness.agent.sink import boot_id
from harness.errors import ConfigError, DriverError
from harness.processes import Managed
from harness.records import DriverRecord, ShardPlan, driver_record

RAY_HINT = "--cluster needs Ray, an optional extra: pip install 'fastapi-harness[ray]'"
CLOCK_PROBES = 7
POLL_S = 0.25
CALL_TIMEOUT_S = 10.0
PLACE_TIMEOUT_S = 30.0


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_HINT) from None
    return ray


class NodeShard:
    """On one node: a fleet of driver processes for the plans it is given; records kept until polled."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.fleet: Any = None
        self.logs = tempfile.mkdtemp(prefix="fastapi-harness-shard-")

    def where(self) -> tuple[str, str]:
        import ray

        return ray.get_runtime_context().get_node_id(), socket.gethostname()

    def clock(self) -> float:
        return time.time()

    def start(self, plans: list[ShardPlan]) -> None:
        from harness.load.manager import DriverFleet

        self.close()
        self.fleet = DriverFleet(plans, self._keep, Path(self.logs)).__enter__()

    def _keep(self, record: DriverRecord) -> None:
        with self.lock:
            self.records.append(record.to_json())

    def poll(self) -> tuple[list[dict[str, Any]], bool, str | None, tuple[str, list[int]]]:
        """(records since the last poll, whether every driver is done, why one failed, (this machine's
        boot id, the pids of this actor and its drivers): the harness samples them if it is on its machine)."""
        with self.lock:
            out, self.records = self.records, []
        pids = [os.getpid(), *(self.fleet.pids if self.fleet is not None else ())]
        if self.fleet is None:
            return out, True, None, (boot_id(), pids)
        return out, self.fleet.finished(), self.fleet.failed(), (boot_id(), pids)

    def stop(self) -> None:
        if self.fleet is not None:
            self.fleet.stop()

    def close(self, last: bool = False) -> None:
        """End the drivers (they flush first); ``last``: the run is over, their logs go too."""
        if self.fleet is not None:
            self.fleet.close()
            self.fleet = None
        if last:
            shutil.rmtree(self.logs, ignore_errors=True)


@dataclasses.dataclass
class Node:
    index: int
    actor: Any
    node_id: str
    host: str
    offset_s: float  # its clock minus the harness's
    uncertainty_s: float  # half the smallest round trip
    drivers: tuple[int, ...] = ()
    lost_at: float | None = None  # seconds since t0

    def describe(self) -> dict[str, Any]:
        return {"node": self.index, "node_id": self.node_id, "host": self.host,
                "offset_ms": round(self.offset_s * 1000, 3), "uncertainty_ms": round(self.uncertainty_s * 1000, 3),
                "drivers": list(self.drivers), "lost_at": self.lost_at}


class RayCluster(Managed):
    """The harness's hold on a Ray cluster for one run: connected, a node actor on each node, clocks read."""

    def __init__(self, address: str, nodes: int = 0):
        self.address, self.wanted = address, nodes
        self.ray: Any = None
        self.group: Any = None
        self.nodes: list[Node] = []
        self.boot = boot_id()

    def start(self) -> None:
        ray = self.ray = _ray()
        self._reachable()
        try:
            ray.init(address=self.address, logging_level="ERROR", log_to_driver=False, configure_logging=False)
        except Exception as e:  # ConnectionError, or Ray's own for an address it cannot use
            raise self._cannot_connect(f"{type(e).__name__}: {str(e)[:200]}") from None
        alive = [n for n in ray.nodes() if n.get("Alive")]
        count = self.wanted or len(alive)
        if count > len(alive):
            raise ConfigError(f"--nodes {count}: the cluster at {self.address} has {len(alive)} node(s) alive")
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.group = placement_group([{"CPU": 0.01}] * count, strategy="STRICT_SPREAD")
        try:
            ray.get(self.group.ready(), timeout=PLACE_TIMEOUT_S)
        except Exception:
            raise ConfigError(f"--cluster: could not place {count} load nodes on {count} distinct nodes within "
                              f"{PLACE_TIMEOUT_S:g} s; ask for fewer with --nodes") from None
        shard = ray.remote(num_cpus=0.01, max_restarts=0)(NodeShard)
        actors = [shard.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            placement_group=self.group, placement_group_bundle_index=i)).remote() for i in range(count)]
        for i, actor in enumerate(actors):
            node_id, host = ray.get(actor.where.remote(), timeout=CALL_TIMEOUT_S)
            offset, uncertainty = self._clock(actor)
            self.nodes.append(Node(i, actor, node_id, host, offset, uncertainty))

    def _reachable(self) -> None:
        """An address with a port answers a TCP connection within seconds (Ray itself retries for a minute)."""
        host, _, port = self.address.removeprefix("ray://").rpartition(":")
        if not port.isdigit():
            return  # "auto": Ray looks for a cluster started on this machine, and says at once when there is none
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=3.0).close()
        except OSError as e:
            raise self._cannot_connect(e.strerror or type(e).__name__) from None

    def _cannot_connect(self, why: str) -> ConfigError:
        return ConfigError(f"--cluster {self.address}: cannot connect ({why}); start a head with `ray start --head` "
                           "or fix the address")

    def _clock(self, actor: Any) -> tuple[float, float]:
        """(offset, uncertainty) of the actor's clock against this one: the probe with the smallest round trip."""
        best = (float("inf"), 0.0)
        for _ in range(CLOCK_PROBES):
            sent = time.time()
            theirs = self.ray.get(actor.clock.remote(), timeout=CALL_TIMEOUT_S)
            back = time.time()
            best = min(best, (back - sent, theirs - (sent + back) / 2))
        return best[1], best[0] / 2

    def describe(self) -> dict[str, Any]:
        return {"address": self.address, "nodes": [n.describe() for n in self.nodes]}

    def fleet(self, plans: list[ShardPlan], on_record: Callable[[DriverRecord], None],
              on_lost: Callable[[Node, str], None]) -> "RayFleet":
        return RayFleet(self, plans, on_record, on_lost)

    def stop(self) -> None:
        if self.ray is None:
            return
        for n in self.nodes:
            try:
                self.ray.get(n.actor.close.remote(True), timeout=CALL_TIMEOUT_S)
            except Exception:
                pass  # lost, or stuck: killing it ends its drivers (they die with their parent)
            try:
                self.ray.kill(n.actor)
            except Exception:
                pass
        if self.group is not None:
            from ray.util.placement_group import remove_placement_group

            try:
                remove_placement_group(self.group)
            except Exception:
                pass
        self.ray.shutdown()
        self.ray = None


class RayFleet:
    """The ``DriverFleet`` interface over the cluster's node actors, for one fleet's plans."""

    def __init__(self, cluster: RayCluster, plans: list[ShardPlan], on_record: Callable[[DriverRecord], None],
                 on_lost: Callable[[Node, str], None]):
        self.cluster, self.plans, self.on_record, self.on_lost = cluster, plans, on_record, on_lost
        self.live = [n for n in cluster.nodes if n.lost_at is None]
        self.done: set[int] = set()
        self.failure: str | None = None
        self.here: dict[int, list[int]] = {}  # node → its actor's and drivers' pids, for nodes on this machine
        self._halt = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="ray-fleet", daemon=True)

    @property
    def pids(self) -> list[int]:
        """The drivers (and node actors) that run on this machine: sampled as the run's own."""
        return [pid for pids in list(self.here.values()) for pid in pids]

    def __enter__(self) -> "RayFleet":
        ray = self.cluster.ray
        if not self.live:
            raise DriverError("every load node of the cluster was lost; nothing is left to send the load")
        shares: dict[int, list[ShardPlan]] = {n.index: [] for n in self.live}
        for k, plan in enumerate(self.plans):
            node = self.live[k % len(self.live)]
            # the same instant of the harness's clock, in the node's
            shares[node.index].append(dataclasses.replace(plan, t0=plan.t0 + node.offset_s))
        for n in self.live:
            n.drivers = tuple(p.driver for p in shares[n.index])
        try:
            ray.get([n.actor.start.remote(shares[n.index]) for n in self.live], timeout=CALL_TIMEOUT_S)
        except Exception as e:
            raise DriverError(f"the load nodes could not start their drivers: {type(e).__name__}: {e}") from None
        self._poller.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _poll(self) -> None:
        while not self._halt.is_set():
            self._drain()
            self._halt.wait(POLL_S)

    def _drain(self) -> None:
        """One poll of every live node: its records forwarded, its state noted, a lost node reported."""
        for n in list(self.live):
            try:
                records, finished, failed, (boot, pids) = self.cluster.ray.get(n.actor.poll.remote(),
                                                                               timeout=CALL_TIMEOUT_S)
            except self.cluster.ray.exceptions.RayTaskError as e:  # the actor is alive: a fault in it, not a loss
                self.failure = self.failure or f"on load node {n.index} ({n.host}): {e}"
                continue
            except Exception as e:  # the actor died with its node, or the node stopped answering
                self.live.remove(n)
                self.here.pop(n.index, None)
                self.on_lost(n, type(e).__name__)
                continue
            if boot and boot == self.cluster.boot:
                self.here[n.index] = pids
            for r in records:
                self.on_record(driver_record(r))
            if finished:
                self.done.add(n.index)
            if failed and self.failure is None:
                self.failure = f"on load node {n.index} ({n.host}): {failed}"

    def finished(self) -> bool:
        return all(n.index in self.done for n in self.live)

    def failed(self) -> str | None:
        return self.failure

    def stop(self) -> None:
        for n in self.live:
            n.actor.stop.remote()

    def close(self) -> None:
        self.stop()
        deadline = time.monotonic() + 10
        while not self.finished() and time.monotonic() < deadline and self._poller.is_alive():
            time.sleep(POLL_S)  # the drivers flush what they measured; the poller forwards it
        self._halt.set()
        if self._poller.is_alive():
            self._poller.join(timeout=CALL_TIMEOUT_S + 1)
        self._drain()  # what came after the poll that found them done
        for n in self.live:
            try:
                self.cluster.ray.get(n.actor.close.remote(), timeout=CALL_TIMEOUT_S)
            except Exception:
                pass
