"""The batch pipe for a Redis Cluster: one OrderedPipe per master, one write per master per batch.

`ClusterPipe.execute(commands)` has OrderedPipe's contract (replies in the commands' order,
a Redis error in its own slot) over a cluster. Every command names keys of one slot (a
sale's keys share the `{item}` hash tag), so it runs whole on one master: the commands are
grouped by the master that owns their first key's slot (redis-py's slot table, shared
with the RedisCluster client), each group goes out as one write on that master's
OrderedPipe, all masters at once, and the replies are put back in order.

`execute_acked` ends each master's write with the Batcher's `WAIT` (--replica-acks) and
gives each command the WAIT reply of the master that ran it.

Redirections; a command is sent at most MAX_ROUNDS times in one call:
  MOVED        the slot has a new master: patch the slot table (redis-py's move_slot)
               and send the command there;
  ASK          the slot is migrating and a key is not on the source: send ASKING and the
               command to the named node in one write, so the ASKING (which lasts one
               command) is the one just before it on that connection;
  TRYAGAIN     a multi-key command on a slot in mid-migration whose keys are not all on
               one side (an admission call gets it until the move ends: its batch key
               never exists yet);
  CLUSTERDOWN  the cluster is reconfiguring (the slot table is reloaded too);
               for these two, wait RETRY_PAUSE and send again.
A command still redirected after that gets `ClusterUnavailable` in its slot (a 503).

Why resending never grants twice: a redirection is a refusal, the script did not run, so
the resent call is its first run. A call whose reply was lost with its connection may
have run; resending it (the Batcher does so once) is safe because the admission script
stores its reply under its batch id in the sale's slot, and a replayed batch id returns
that reply and grants nothing (sale_store.ADMIT_LUA). MIGRATE moves that key with the
sale's other keys, so this holds across a resharding too.

A master whose connection fails: its OrderedPipe drops the connection and fails what was
waiting on it. If nothing in the call got a reply, the error is raised, exactly as one
Redis does it (Batcher retries the batch once, then answers 503). Otherwise that master's
commands are sent once more after reloading the slot table (the slot may have failed
over), and if that fails too they get the error in their slots: a dead master makes its
own sales answer 503, not every sale.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import (
    AskError,
    ClusterDownError,
    DataError,
    MovedError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)

from seckill.store.ordered_pipe import OrderedPipe
from seckill.throttle import Throttle

log = logging.getLogger("seckill.cluster")

# Sends of one command in one call: a redirection costs a round trip, and a slot moves
# from one master to one other (MOVED then, in mid-move, ASK and TRYAGAIN).
MAX_ROUNDS = 10
# Between resends after TRYAGAIN / CLUSTERDOWN (redis-py waits 0.05 s too): a key
# migration takes milliseconds; the Batcher's --redis-timeout bounds the whole call.
RETRY_PAUSE = 0.05

_KEY_AT_3 = frozenset({"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"})


class ClusterUnavailable(RedisError):
    """No cluster node answers, the slot table does not cover a slot, or a command was
    still redirected after MAX_ROUNDS sends (so it did not run)."""


def first_key(command: Sequence[Any]) -> Any:
    """The key whose slot routes a command: a script's first key, else its first argument."""
    name = command[0].decode() if isinstance(command[0], bytes) else str(command[0])
    if name.upper() in _KEY_AT_3:
        if len(command) < 4 or int(command[2]) < 1:
            raise DataError(f"{name} without a key cannot be routed in a cluster")
        return command[3]
    if len(command) < 2:
        raise DataError(f"{name} has no key to route it by in a cluster")
    return command[1]


class ClusterPipe:
    def __init__(self, cluster: RedisCluster) -> None:
        self._cluster = cluster
        self._pipes: dict[str, tuple[OrderedPipe, ConnectionPool]] = {}  # by node name host:port
        self._reload = False  # reload the whole slot table before the next send
        self._warnings = Throttle(1.0)  # commands given up: a long migration must not flood the log

    async def execute(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send the commands, one write per master; their replies in order (a Redis error
        in its slot). Raises if no command got a reply because connections failed."""
        return (await self._execute(commands, None))[0]

    async def execute_acked(self, commands: Sequence[tuple[Any, ...]], replicas: int,
                            timeout_ms: int) -> tuple[list[Any], list[Any]]:
        """As execute(), each master's write ending with `WAIT replicas timeout_ms`; also,
        per command, the WAIT reply of the master that ran it (a count, or an error)."""
        return await self._execute(commands, ("WAIT", replicas, timeout_ms))

    async def _execute(self, commands: Sequence[tuple[Any, ...]],
                       wait: tuple[Any, ...] | None) -> tuple[list[Any], list[Any]]:
        replies: list[Any] = [None] * len(commands)
        acks: list[Any] = [None] * len(commands)
        answered = [False] * len(commands)
        pending: list[tuple[int, str | None]] = [(i, None) for i in range(len(commands))]  # (index, ASK node)
        connection_retried: set[int] = set()
        for round_ in range(MAX_ROUNDS):
            if not pending:
                return replies, acks
            await self._slot_table()
            groups: dict[str, list[tuple[int, bool]]] = {}
            for index, asked in pending:
                node = asked or self._owner(commands[index])
                groups.setdefault(node, []).append((index, asked is not None))
            outcomes = await asyncio.gather(
                *(self._send(node, [(commands[i], ask) for i, ask in members], wait)
                  for node, members in groups.items()),
                return_exceptions=True,
            )
            pending, pause = [], False
            failure: BaseException | None = None
            for members, outcome in zip(groups.values(), outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    if not isinstance(outcome, RedisError | OSError):
                        raise outcome  # cancelled (the Batcher's timeout), or a bug
                    failure = outcome
                    for index, _ in members:
                        if index in connection_retried:
                            replies[index], answered[index] = outcome, True
                        else:
                            connection_retried.add(index)
                            pending.append((index, None))
                    continue
                answers, waited = outcome
                for (index, _), reply in zip(members, answers, strict=True):
                    acks[index] = waited
                    if isinstance(reply, MovedError):  # (before AskError: it is one)
                        await self._moved(reply)
                        pending.append((index, None))
                    elif isinstance(reply, AskError):
                        pending.append((index, self._node_name(reply.host, reply.port)))
                    elif isinstance(reply, TryAgainError | ClusterDownError):
                        pause = True
                        self._reload = self._reload or isinstance(reply, ClusterDownError)
                        pending.append((index, None))
                    else:
                        replies[index], answered[index] = reply, True
            if failure is not None:
                self._reload = True  # the failed master's slots may have failed over
                if not any(answered):
                    raise failure  # as one Redis: the Batcher retries the whole batch once
            if pending and pause and round_ < MAX_ROUNDS - 1:
                await asyncio.sleep(RETRY_PAUSE)
        if pending:
            self._give_up(commands, replies, [i for i, _ in pending])
        return replies, acks

    def reset(self, exc: BaseException) -> None:
        """Drop every master's connection (what waits on them fails) and reload the slot
        table before the next send."""
        for pipe, _ in self._pipes.values():
            pipe.reset(exc)
        self._reload = True

    async def close(self) -> None:
        pipes, self._pipes = self._pipes, {}
        for pipe, pool in pipes.values():
            await pipe.close()
            await pool.disconnect()

    async def _slot_table(self) -> None:
        try:
            await self._cluster.initialize()  # (nothing to do once the table is loaded)
            if self._reload:
                self._reload = False
                await self._cluster.nodes_manager.initialize()
        except RedisClusterException as exc:
            raise ClusterUnavailable(str(exc)) from exc

    def _owner(self, command: tuple[Any, ...]) -> str:
        slot = self._cluster.keyslot(first_key(command))
        try:
            return str(self._cluster.nodes_manager.get_node_from_slot(slot).name)
        except RedisClusterException as exc:  # SlotNotCoveredError
            raise ClusterUnavailable(str(exc)) from exc

    async def _moved(self, error: MovedError) -> None:
        try:
            await self._cluster.nodes_manager.move_slot(error)
        except (KeyError, RedisClusterException):  # the table was being reloaded: load it again
            self._reload = True

    def _node_name(self, host: str, port: int) -> str:
        host, port = self._cluster.nodes_manager.remap_host_port(host, port)
        return f"{host}:{port}"

    async def _send(self, node: str, commands: list[tuple[tuple[Any, ...], bool]],
                    wait: tuple[Any, ...] | None) -> tuple[list[Any], Any]:
        """One write to one node; `True` beside a command sends ASKING just before it, and
        `wait` (a WAIT) ends the write. The replies, and the WAIT's (None without one)."""
        packed: list[tuple[Any, ...]] = []
        for command, ask in commands:
            if ask:
                packed.append(("ASKING",))
            packed.append(command)
        if wait is not None:
            packed.append(wait)
        replies = await self._pipe(node).execute(packed)
        waited = replies.pop() if wait is not None else None
        if len(replies) == len(commands):
            return replies, waited
        out, at = [], 0
        for _, ask in commands:
            at += ask  # skip ASKING's +OK
            out.append(replies[at])
            at += 1
        return out, waited

    def _pipe(self, node: str) -> OrderedPipe:
        entry = self._pipes.get(node)
        if entry is None:
            # A connection made as the cluster client makes its own (AUTH, TLS, timeouts,
            # no CLIENT SETINFO), but owned by the pipe: one per node, reads in order.
            kwargs: dict[str, Any] = dict(self._cluster.get_connection_kwargs())
            for name in ("max_connections", "response_callbacks"):
                kwargs.pop(name, None)
            kwargs.setdefault("connection_class", Connection)
            host, _, port = node.rpartition(":")
            pool = ConnectionPool(**{**kwargs, "host": host, "port": int(port)})
            entry = self._pipes[node] = (OrderedPipe(Redis(connection_pool=pool)), pool)
        return entry[0]

    def _give_up(self, commands: Sequence[tuple[Any, ...]], replies: list[Any], indexes: list[int]) -> None:
        for index in indexes:
            replies[index] = ClusterUnavailable(f"still redirected after {MAX_ROUNDS} sends (slot in migration?)")
        given_up = self._warnings.tick(len(indexes))
        if given_up:
            log.warning("%d command(s) still redirected after %d sends, answered unavailable; last key %r",
                        given_up, MAX_ROUNDS, first_key(commands[indexes[-1]]))
