"""The reserved tags: the receivers of conveyor's own services, on every rank.

One table, so that no two services can share a name by accident and every
tag a user may not register is visible at a glance (all start with
`RESERVED_PREFIX`).
"""

__all__ = [
    "ACTOR_CALL",
    "ACTOR_CLAIM",
    "ACTOR_CREATE",
    "ACTOR_LOOKUP",
    "ACTOR_PUBLISH",
    "ACTOR_RELEASE",
    "ACTOR_TELL",
    "CANCEL",
    "CHUNK_FETCH",
    "CHUNK_GIVE_BACK",
    "CHUNK_MAPPED",
    "CHUNK_REFILL",
    "CHUNK_STATES",
    "CHUNK_TASK",
    "COLLECTIVE",
    "DRIVER_DONE",
    "EXECUTOR_RUN",
    "ITEM_FETCH",
    "ITEM_ORDER",
    "ITEM_MAPPED",
    "ITEM_PUT",
    "TABLE_DELETE",
    "TABLE_GET",
    "TABLE_PUT",
    "TABLE_UNWAIT",
    "TABLE_WAIT",
]

# Requests (_requests, _dispatch)
CANCEL = "conveyor.cancel"  # send: a requester cancelled its request `payload`

# Actors (_actors)
ACTOR_CREATE = "conveyor.actor.create"  # request: make an actor here; answers its number
ACTOR_CALL = "conveyor.actor.call"  # request: call a method of an actor here
ACTOR_TELL = "conveyor.actor.tell"  # send: the same, without an answer
ACTOR_CLAIM = "conveyor.actor.claim"  # request, to a name's home: reserve the name
ACTOR_PUBLISH = "conveyor.actor.publish"  # request, to a name's home: the actor now exists
ACTOR_RELEASE = "conveyor.actor.release"  # send, to a name's home: its spawn failed
ACTOR_LOOKUP = "conveyor.actor.lookup"  # request, to a name's home: where the actor is

# Executors (_executor)
EXECUTOR_RUN = "conveyor.executor.run"  # request: run a function (sent once, then by digest)

# Collectives (_collectives)
COLLECTIVE = "conveyor.collective"  # send: one rank's part of a collective

# Item stores and orders (_store)
ITEM_FETCH = "conveyor.fetch"  # request: a copy of an item
ITEM_PUT = "conveyor.put"  # request: store an item (a destination of an order)
ITEM_ORDER = "conveyor.order"  # request: carry out a Transfer
ITEM_MAPPED = "conveyor.fetch.mapped"  # send: a fetcher mapped a shared item: its hold may go

# Distributed tables (_table)
TABLE_PUT = "conveyor.table.put"
TABLE_GET = "conveyor.table.get"
TABLE_WAIT = "conveyor.table.wait"
TABLE_DELETE = "conveyor.table.delete"
TABLE_UNWAIT = "conveyor.table.unwait"  # send: a waiter cancelled its wait: forget it

# Chunks and distributed arrays (_chunks, _darray)
CHUNK_TASK = "conveyor.chunk.task"  # send: compute a chunk
CHUNK_MAPPED = "conveyor.chunk.mapped"  # send: a task's shared function was mapped: its hold may go
CHUNK_FETCH = "conveyor.chunk.fetch"  # request: rows of a chunk, once settled
CHUNK_GIVE_BACK = "conveyor.chunk.give_back"  # send: reference weight returned to its home
CHUNK_REFILL = "conveyor.chunk.refill"  # request: more weight for a reference running low
CHUNK_STATES = "conveyor.chunks"  # the table where owners publish what their chunks became
DRIVER_DONE = "conveyor.driver.done"  # send: the driver left its `with` block
