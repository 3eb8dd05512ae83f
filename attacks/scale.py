"""An audit's cells spread over processes: one per device (``devices``), or one per rank under ``torchrun``.

    nasty audit ... --devices cuda:0,cuda:1,cuda:2,cuda:3 --out runs/audit
    torchrun --nproc-per-node 4 -m nasty audit ... --out runs/audit     # any number of machines

Every process plans the same grid from the shared ``out`` and trains what no other process holds:
before it trains a cell, it claims it with a file beside it, ``cells/<cell>.claim-<n>``, made with
``O_CREAT|O_EXCL`` (one process wins), holding its pid, machine, start time, the cell's settings key
and a heartbeat time it rewrites every ``NASTY_CLAIM_TIMEOUT / 10`` seconds while it trains. The unit
claimed is the unit the audit trains: a group of cells trained together (an attack's seeds as one
ensemble, :func:`attacks.audit._group`) is claimed whole or not at all, so every cell is trained
with the same companions, and to the same numbers, as in one process. Once claimed, the cells are
read again (another process may have finished them, or saved their state since the plan): a
finished cell is taken as it is, a saved state is gone on from.

A claim is stale when its process is gone (same machine) or its heartbeat is older than
``NASTY_CLAIM_TIMEOUT`` seconds (300; any machine): another process then makes claim ``n + 1``
(``O_EXCL`` again: one taker wins), says so in one line, and goes on from the cell's saved state. A
live claim with other settings is another audit in the same ``out``: an error naming the setting.
A cell whose thief diverged is recorded beside it (``cells/<cell>.failed``): the other processes of
the same run count it as failed instead of training it again; a later run tries it again.

The cells are claimed costliest first (:func:`cell_cost`, from each attack's rough ``cost``): a
sweep's cell before a KD cell, a KD cell before a baseline's, so the grid does not end with one
process training a long cell while the others wait.

When every cell is finished (or failed), each process has the whole grid; only the writer (rank 0,
or the process that started the ``devices`` workers, after they ended) writes the report. No
process group is needed: the files are the barrier (a ``torch.distributed`` barrier follows where a
group is initialised).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from nasty import checkpoint as ckpt
from nasty import distributed
from nasty.errors import NastyError, NastyWarning, first_line, one_line
from nasty.safety import alive

__all__ = ["Share", "current", "writes", "spread", "device", "first_difference", "cell_cost"]

STARTED = time.time()  # this process's start (a failure recorded since then is this run's, under torchrun)
CLAIM_BYTES = 1 << 16


def claim_timeout() -> float:
    """Seconds without a heartbeat after which a claim is stale (``NASTY_CLAIM_TIMEOUT``, default 300)."""
    raw = os.environ.get("NASTY_CLAIM_TIMEOUT", "300")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise NastyError(f"NASTY_CLAIM_TIMEOUT={one_line(raw)} is not a number of seconds > 0")
    return value


def first_difference(saved, now) -> tuple[str, object, object]:
    """The first setting (dotted, e.g. ``settings.pool_size``) where two keys differ, and its two values."""
    name = ""
    while True:  # descend to the first setting that differs
        diff = next((k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)), None)
        if diff is None:
            return name, saved, now
        name = f"{name}.{diff}" if name else diff
        saved, now = saved.get(diff), now.get(diff)
        if not (isinstance(saved, dict) and isinstance(now, dict)):
            return name, saved, now


# --------------------------------------------------------------------------- who this process is


@dataclass
class Share:
    """This process's part in a run of several: ``writer`` writes the report; ``since`` is the run's
    start (failures recorded since then are this run's); ``label`` names it in notes."""

    writer: bool
    since: float = field(default_factory=time.time)
    label: str = ""
    poll: float = 1.0  # seconds between looks at cells that others hold

    def run(self, todo: list, *, group, train, refresh) -> list:
        """Train the unfinished cells of ``todo`` that no other process holds, a ``group(todo, i)`` at a
        time (``train(cells) -> {path: cell}``), and wait for the others; return ``todo`` with every
        cell done: as the files now say (``refresh(cell)``), trained here, or failed in this run."""
        todo = list(todo)
        where = {c.path: i for i, c in enumerate(todo)}
        claims = Claims(self)

        def done(cells: dict) -> None:
            for path, cell in cells.items():
                todo[where[path]] = todo[where[path]]._replace(done=cell)

        while left := sorted((i for i, c in enumerate(todo) if c.done is None), key=lambda i: -cell_cost(todo[i])):
            trained = False
            for i in left:
                if todo[i].done is not None:  # finished with an earlier group of this pass
                    continue
                members = group(todo, i)
                held = claims.take(members)
                if held is None:  # another process holds one of them: look again later
                    continue
                with held:
                    for c in members:
                        todo[where[c.path]] = refresh(c)
                    done({c.path: f for c in members if todo[where[c.path]].done is None
                          and (f := self._failure(todo[where[c.path]])) is not None})
                    fresh = [todo[where[c.path]] for c in members if todo[where[c.path]].done is None]
                    if fresh:  # as the files are now: the first and those that go on from its epoch
                        done(self._record(train(group(fresh, 0))))
                        trained = True
            if not trained and any(todo[i].done is None for i in left):
                time.sleep(self.poll)
        barrier()
        return todo

    def _failure(self, cell) -> dict | None:
        """The failure this run recorded for ``cell`` (its thief diverged), if any."""
        try:
            record = json.loads(_failed_path(cell.path).read_text()[:CLAIM_BYTES])
        except (OSError, ValueError):
            return None
        if not (isinstance(record, dict) and record.get("key") == cell.key and isinstance(record.get("failed"), str)
                and isinstance(record.get("time"), (int, float))):
            return None
        if not record["time"] >= self.since:  # an earlier run's: this one tries again
            return None
        return {"key": cell.key, "seconds": 0.0, "runs": [], "failed": record["failed"]}

    def _record(self, cells: dict) -> dict:
        """Leave a failure beside each failed cell (the others of this run read it); clear it on success."""
        for path, cell in cells.items():
            if cell.get("failed"):
                ckpt.write_json(_failed_path(path), {"key": cell["key"], "failed": cell["failed"], "time": time.time()})
            else:
                _failed_path(path).unlink(missing_ok=True)
        return cells


def cell_cost(cell) -> float:
    """A cell's rough time against a KD cell of both sides (:attr:`attacks.base.Attack.cost`), halved
    where one side is trained (the reference taken from another audit, or the teacher is the reference).
    The processes that share a grid claim its cells costliest first, the plan's order on a tie: the
    longest-processing-time rule, which keeps the last cells short so the processes end together."""
    return cell.attack.cost / 2 if cell.reference is not None or cell.mirror else cell.attack.cost


def _failed_path(cell: Path) -> Path:
    return cell.with_name(cell.name.removesuffix(".json") + ".failed")


_ACTING: Share | None = None  # set in a worker started by ``spread`` (and around its parent's own pass)


def current() -> Share | None:
    """This process's part when cells are shared (a ``devices`` worker, or a rank under torchrun), else ``None``."""
    if _ACTING is not None:
        return _ACTING
    w = distributed.world()
    return Share(writer=w.main, since=STARTED, label=f"rank {w.rank}") if w.active else None


def writes() -> bool:
    """Whether this process writes reports (one process alone, or the writer of several)."""
    share = current()
    return share is None or share.writer


def device(dev):
    """Under torchrun, this rank's device (``cuda:LOCAL_RANK`` for a GPU); else ``dev``."""
    return distributed.rank_device(dev, distributed.world())


def barrier() -> None:
    """A torch.distributed barrier where a process group is initialised (the files already agree)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def note(text: str) -> None:
    warnings.warn(NastyWarning(text), stacklevel=2)


# --------------------------------------------------------------------------- claims


class Claims:
    """Claim files of one process: ``take`` a group's cells, all or none."""

    def __init__(self, share: Share):
        self.share = share
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.timeout = claim_timeout()
        self.waiting: set[Path] = set()  # cells whose holder was named once already

    def take(self, cells: list) -> _Held | None:
        held = []
        for c in cells:
            path = self._take(c)
            if path is None:
                _Held(self, held, beat=False).release()
                return None
            held.append(path)
        return _Held(self, held)

    def _take(self, cell) -> Path | None:
        gens = _generations(cell.path)
        n, stale = 1, None
        if gens:
            top = _claim_path(cell.path, gens[-1])
            info = _read_claim(top)
            stale = self._stale(info, top)
            if stale is None:  # alive
                self._check_key(info, cell)
                return None
            n = gens[-1] + 1
        mine = _claim_path(cell.path, n)
        try:
            fd = os.open(mine, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:  # another process claimed (or took over) it first
            return None
        except OSError as e:
            raise NastyError(f"cannot claim {one_line(mine)}: {one_line(e.strerror or e)}") from None
        try:
            os.write(fd, json.dumps(self._info(cell)).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if stale:  # not one released while we looked
            note(f"{_cell_name(cell.path)}: took over the claim of {stale}; it goes on from its saved state, if any")
        return mine

    def _info(self, cell, heartbeat: float | None = None) -> dict:
        now = time.time()
        return {"pid": self.pid, "host": self.host, "started": STARTED, "heartbeat": heartbeat or now,
                "by": self.share.label, "key": cell.key}

    def _stale(self, info: dict | None, path: Path) -> str | None:
        """Why the claim ``info`` at ``path`` is stale (its holder, in words; empty: released since it
        was listed), or ``None`` if it is alive."""
        now = time.time()
        if info is None:  # being written, or broken: judged by its age
            try:
                age = now - path.stat().st_mtime
            except FileNotFoundError:  # released while we looked: free, nothing taken over
                return ""
            return f"an unreadable claim {age:.0f} s old" if age > self.timeout else None
        who = f"pid {info['pid']} on {info['host']}"
        age = now - info["heartbeat"]
        if info["host"] == self.host and not alive(info["pid"]):
            return f"{who} (its process is gone)"
        if age > self.timeout:
            return f"{who} (no heartbeat for {age:.0f} s, more than NASTY_CLAIM_TIMEOUT={self.timeout:g})"
        return None

    def _check_key(self, info: dict | None, cell) -> None:
        """A live claim of other settings is another audit in this ``out``: refused, the setting named."""
        if info is None:
            return
        if info["key"] != cell.key:
            name, there, now = first_difference(info["key"], cell.key)
            raise NastyError(
                f"`out` {one_line(cell.path.parent.parent)}: another audit with other settings is training "
                f"{_cell_name(cell.path)} there now (pid {info['pid']} on {one_line(info['host'])}; "
                f"{one_line(name)[:80]} differs: {one_line(repr(there))[:80]} there, {one_line(repr(now))[:80]} now); "
                f"use another `out`, or wait for it to end")
        late = time.time() - info["heartbeat"] > 3 * self.timeout / 10  # it beats every timeout / 10
        if late and cell.path not in self.waiting:
            self.waiting.add(cell.path)
            note(f"{_cell_name(cell.path)} is claimed by pid {info['pid']} on {info['host']}: waiting for it (it is "
                 f"taken over after {self.timeout:g} s without a heartbeat; if no process of this audit runs "
                 f"there, remove {one_line(_claim_path(cell.path, '*'))} to take it now)")


class _Held:
    """Claims held while their cells train: a thread rewrites their heartbeat; leaving releases them."""

    def __init__(self, claims: Claims, paths: list[Path], *, beat: bool = True):
        self.claims, self.paths = claims, paths
        self.info = {p: _read_claim(p) for p in paths}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name="nasty-claim-heartbeat")
        if paths and beat:
            self.thread.start()

    def _beat(self) -> None:
        while not self.stop.wait(self.claims.timeout / 10):
            for p in self.paths:
                if self.info[p] is None or not p.exists():  # taken over by another process: not ours to renew
                    continue
                try:
                    ckpt.write_json(p, {**self.info[p], "heartbeat": time.time()})
                except (OSError, NastyError):  # a full disk for a moment: the next beat tries again
                    pass

    def release(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()
        for p in self.paths:  # ours, and the stale ones below it that we took over
            cell, _, n = p.name.rpartition(".claim-")
            for g in _generations(p.with_name(cell + ".json")):
                if g <= int(n):
                    _claim_path(p.with_name(cell + ".json"), g).unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _claim_path(cell: Path, n) -> Path:
    return cell.with_name(f"{cell.name.removesuffix('.json')}.claim-{n}")


def _cell_name(cell: Path) -> str:
    return f"cell {one_line(cell.name.removesuffix('.json'))}"


def _generations(cell: Path) -> list[int]:
    prefix = f"{cell.name.removesuffix('.json')}.claim-"
    try:
        names = os.listdir(cell.parent)
    except FileNotFoundError:
        return []
    return sorted(int(n[len(prefix):]) for n in names if n.startswith(prefix) and n[len(prefix):].isdigit())


def _read_claim(path: Path) -> dict | None:
    """A claim's content, or ``None`` while it is being written (or if it is not one)."""
    try:
        with open(path, "rb") as f:
            info = json.loads(f.read(CLAIM_BYTES))
    except (OSError, ValueError):
        return None
    ok = (isinstance(info, dict) and isinstance(info.get("pid"), int) and isinstance(info.get("host"), str)
          and isinstance(info.get("heartbeat"), (int, float)) and isinstance(info.get("key"), dict))
    return info if ok else None


# --------------------------------------------------------------------------- one worker per device


def spread(fn, kwargs: dict, *, devices) -> dict:
    """``fn(**kwargs)`` (an audit or a comparison) in one worker process per device of ``devices`` (a list,
    or a comma-separated string), sharing ``out``'s cells; then here, on the first device, as the
    writer of the report (it trains only what a worker that died left). On the CPU each worker takes
    an equal share of this process's threads (the numbers are those of one process with that many)."""
    from multiprocessing.connection import wait

    import torch
    import torch.multiprocessing as mp

    devices = parse_devices(devices)
    if distributed.world().active:
        raise NastyError("`devices` starts its own processes; under torchrun leave it out (each rank takes "
                         "cuda:LOCAL_RANK, or the CPU)")
    if kwargs.get("device", "auto") != "auto":
        raise NastyError(f"give `device` or `devices`, not both (got {one_line(kwargs['device'])} and "
                         f"{','.join(devices)})")
    cpus = sum(d == "cpu" for d in devices)
    threads = max(1, torch.get_num_threads() // cpus) if cpus else None
    since = time.time()
    ctx = mp.get_context("spawn")
    answers = ctx.SimpleQueue()
    workers = []
    try:
        for k, d in enumerate(devices):
            share = Share(writer=False, since=since, label=f"worker {k} on {d}")
            p = ctx.Process(target=_worker, args=(fn, {**kwargs, "devices": None, "device": d}, share,
                                                  threads if d == "cpu" else None, answers), daemon=False)
            p.start()
            workers.append((share.label, p))
        running = {p.sentinel: p for _, p in workers}
        while running:  # each reaped as it ends (a zombie would hold its claims until its turn came)
            for ended in wait(list(running)):
                running.pop(ended).join()
    except BaseException:  # Ctrl-C here: the workers got it too; none is left behind
        for _, p in workers:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
        raise
    errors = []
    while not answers.empty():
        errors.append(answers.get())
    if errors:
        label, text = errors[0]
        raise NastyError(f"{label}: {text}" + (f" ({len(errors) - 1} other worker(s) failed too)" if len(errors) > 1 else ""))
    for label, p in workers:
        if p.exitcode:
            note(f"{label} ended with exit code {p.exitcode}; its cells are taken over here")
    global _ACTING
    before, _ACTING = _ACTING, Share(writer=True, since=since, label="writer")
    old_threads = torch.get_num_threads()
    try:
        if devices[0] == "cpu":
            torch.set_num_threads(threads)
        return fn(**{**kwargs, "devices": None, "device": devices[0]})
    finally:
        _ACTING = before
        torch.set_num_threads(old_threads)


def parse_devices(devices) -> list[str]:
    """``"cuda:0,cuda:1"`` or a list as a list of device names, each one that exists here."""
    from nasty.trainer import resolve_device

    names = [d.strip() for d in (devices.split(",") if isinstance(devices, str) else devices) if str(d).strip()]
    if not names:
        raise NastyError("`devices`: give one or more devices, e.g. cuda:0,cuda:1 (or cpu,cpu)")
    return [str(resolve_device(str(d), option="`devices`")) for d in names]


def _worker(fn, kwargs: dict, share: Share, threads: int | None, answers) -> None:
    """One worker of :func:`spread`: ``fn`` as a non-writing part; a failure goes back as one line."""
    import torch

    global _ACTING
    _ACTING = share
    if threads:
        torch.set_num_threads(threads)
    warnings.simplefilter("always", NastyWarning)
    warnings.showwarning = lambda message, category, *a, **k: print(
        f"warning: {share.label}: {message}" if issubclass(category, NastyWarning)
        else warnings.formatwarning(message, category, *a, **k), file=sys.stderr, end="\n" if issubclass(category, NastyWarning) else "")
    try:
        fn(**kwargs)
    except NastyError as e:
        answers.put((share.label, one_line(str(e))))
    except KeyboardInterrupt:
        answers.put((share.label, "interrupted"))
    except BaseException as e:
        import traceback

        traceback.print_exc()
        answers.put((share.label, f"{first_line(e)} (its traceback is above)"))
