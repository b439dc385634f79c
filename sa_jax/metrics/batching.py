"""Running a metric model over the windows of many files: windows of several files share one jitted
call of a fixed batch size, split over a data mesh of the local devices, while the files are read
and framed on host threads ahead of the device; only a bounded number of windows is held at once.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections import deque
from typing import Callable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def data_mesh() -> jax.sharding.Mesh:
    """A one-axis ('data',) mesh over this process' devices."""
    devices = jax.local_devices()
    return jax.make_mesh((len(devices),), ("data",), devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,))


class BatchedModel:
    """`fn(variables, windows) -> outputs` compiled for (batch_size, *window_shape) inputs (and a few
    power-of-two sizes for a short last batch), the batch split over the data mesh and the variables
    replicated; `__call__` takes any number of windows (zero padding dropped from the outputs)."""

    def __init__(self, fn: Callable, variables, batch_size: int):
        self.mesh = data_mesh()
        n = self.mesh.size
        self.batch_size = max(n, -(-int(batch_size) // n) * n)      # a multiple of the device count
        self.data = NamedSharding(self.mesh, P("data"))
        replicated = NamedSharding(self.mesh, P())
        self.variables = jax.device_put(variables, replicated)
        self.fn = jax.jit(fn, in_shardings=(replicated, self.data), out_shardings=self.data)
        self.seconds = 0.0      # device time spent, for the per-metric timing

    def padded_size(self, n: int) -> int:
        """A short last batch is padded only to the next power of two (times the device count), so a
        small set does not pay for a whole batch and at most log2(batch) shapes are compiled."""
        devices = self.mesh.size
        size = devices
        while size < n:
            size *= 2
        return min(size, self.batch_size)

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(windows), self.batch_size):
            chunk = windows[start:start + self.batch_size]
            n = len(chunk)
            size = self.padded_size(n)
            if n < size:
                chunk = np.concatenate([chunk, np.zeros((size - n,) + chunk.shape[1:], chunk.dtype)])
            t0 = time.perf_counter()
            y = np.asarray(self.fn(self.variables, jax.device_put(chunk, self.data)))
            self.seconds += time.perf_counter() - t0
            out.append(y[:n])
        return np.concatenate(out) if out else np.zeros((0,))


def stream(items: Sequence, prepare: Callable[[object], list[np.ndarray]], model: BatchedModel, workers: int = 2,
           progress: Callable[[int], None] | None = None) -> Iterator[tuple[object, list[np.ndarray]]]:
    """For each item (in order): `prepare(item)` -> segments (each (n_i, *window_shape)) on host
    threads; their windows go through `model` batch by batch together with other items' windows;
    yields (item, [outputs of each segment]) as soon as all of an item's windows are done.
    At most about `workers + 1` items are prepared ahead and one batch of windows is pending."""
    ahead = max(1, workers) + 1
    with cf.ThreadPoolExecutor(max(1, workers)) as pool:
        futures: deque = deque()
        it = iter(items)

        def refill():
            while len(futures) < ahead:
                item = next(it, _END)
                if item is _END:
                    return
                futures.append((item, pool.submit(prepare, item)))

        pending: list[tuple[int, int, np.ndarray]] = []     # (item slot, segment, windows not yet run)
        results: dict[int, list] = {}
        order: deque = deque()                               # item slots in order, not yet yielded
        slots: dict[int, tuple[object, int]] = {}            # slot -> (item, segments)
        count, slot = 0, 0

        def run(flush: bool):
            nonlocal count, pending
            while count >= model.batch_size or (flush and count):
                take, batch, owners = model.batch_size, [], []
                rest = []
                for s, seg, w in pending:
                    if take <= 0:
                        rest.append((s, seg, w))
                        continue
                    part, left = w[:take], w[take:]
                    batch.append(part)
                    owners.append((s, seg, len(part)))
                    take -= len(part)
                    if len(left):
                        rest.append((s, seg, left))
                pending = rest
                outputs = model(np.concatenate(batch))
                count -= len(outputs)
                start = 0
                for s, seg, n in owners:
                    results[s][seg].append(outputs[start:start + n])
                    start += n

        def finished() -> Iterator:
            waiting = {s for s, _, _ in pending}
            while order and order[0] not in waiting:
                s = order.popleft()
                item, _ = slots.pop(s)
                segments = results.pop(s)
                yield item, [np.concatenate(parts) if parts else np.zeros((0,)) for parts in segments]
                if progress:
                    progress(1)

        refill()
        while futures:
            item, future = futures.popleft()
            segments = future.result()
            refill()
            slots[slot] = (item, len(segments))
            results[slot] = [[] for _ in segments]
            order.append(slot)
            for seg, w in enumerate(segments):
                if len(w):
                    pending.append((slot, seg, w))
                    count += len(w)
            slot += 1
            run(flush=False)
            yield from finished()
        run(flush=True)
        yield from finished()


_END = object()
