"""What every rank serves for the shell: the receivers of its ``shell.*`` tags.

Rank 0's interpreter sends requests to them (including to itself); the
other ranks `Service.serve` until rank 0 sends ``shell.quit``.
"""

import os
import socket

from .._store import item_bytes

__all__ = ["Service", "describe"]

# Tags of the receivers every rank registers (the "conveyor." prefix is reserved).
TAG_PUT = "shell.put"
TAG_RM = "shell.rm"
TAG_LS = "shell.ls"
TAG_STATS = "shell.stats"
TAG_INFO = "shell.info"
TAG_CAPACITY = "shell.capacity"
TAG_QUIT = "shell.quit"


def describe(item):
    """(dtype or type name, shape or None) of an item."""
    import numpy as np

    if isinstance(item, (np.ndarray, np.generic)):
        return str(item.dtype), list(item.shape)
    return type(item).__name__, None


class Service:
    """The receivers of the shell, registered on every rank of `messenger`.

    Rank 0 sends requests to them (including to itself); `serve` runs the
    other ranks until rank 0 sends ``shell.quit``.
    """

    def __init__(self, messenger):
        self.m = messenger
        self.done = False
        for tag, handler in [
            (TAG_PUT, self._put),
            (TAG_RM, self._rm),
            (TAG_LS, self._ls),
            (TAG_STATS, self._stats),
            (TAG_INFO, self._info),
            (TAG_CAPACITY, self._capacity),
            (TAG_QUIT, self._quit),
        ]:
            messenger.on(tag)(handler)

    def serve(self):
        """Handle messages until ``shell.quit`` comes."""
        while not self.done:
            self.m.progress(0.5)

    def quit_others(self):
        """Tell every other rank to stop serving."""
        for rank in range(self.m.size):
            if rank != self.m.rank:
                self.m.send(rank, TAG_QUIT)

    def _put(self, msg):
        name, item = msg.payload
        self.m.store.put(name, item)
        return item_bytes(item)

    def _rm(self, msg):
        self.m.store.delete(msg.payload)

    def _ls(self, msg):
        store = self.m.store
        items = []
        for name in sorted(store.keys()):
            item = store.get(name)
            kind, shape = describe(item)
            items.append([name, kind, shape, item_bytes(item)])
        return {"items": items, "nbytes": store.nbytes, "capacity": store.capacity}

    def _stats(self, msg):
        return self.m.stats()

    def _info(self, msg):
        store = self.m.store
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "items": len(store),
            "nbytes": store.nbytes,
            "capacity": store.capacity,
        }

    def _capacity(self, msg):
        if msg.payload != "get":
            self.m.store.capacity = msg.payload
        return {"capacity": self.m.store.capacity, "nbytes": self.m.store.nbytes}

    def _quit(self, msg):
        self.done = True
