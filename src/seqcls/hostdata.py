"""The data stage once per host: local rank 0 reads and tokenizes, the host's other ranks map its arrays.

Every rank needs every training row over an epoch (the seeded global batch order is split round-robin,
see distributed.shard), so a rank cannot simply hold a slice without changing the batches. Instead the
tokenizing rank writes the flat token arrays as .npy files into a fresh folder of the local temporary
directory, and every rank of the host (itself included) maps them: one copy in the host's page cache,
of which each rank touches only the rows it trains on and evaluates. Once all ranks have mapped the
files the folder is deleted; the mappings stay valid until the processes exit, so nothing is left on
disk and no later run can find (or reuse) the arrays. docs/distributed.md explains the choice.

Ranks talk through two small object gathers on the process group: "here are my facts (or my error)"
after tokenizing, "mapped (or my error)" after mapping. A failure on any rank is in the gather, so
every rank raises a clear error at once instead of waiting out distributed_timeout_s.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import data, distributed
from .data import Encoded, Prepared
from .distributed import World
from .errors import SeqclsError

# Labels are read whole (metrics, losses) and handed to torch.from_numpy, which wants a writable array: copied.
MAPPED_FIELDS, COPIED_FIELDS = ("input_ids", "token_type_ids", "offsets", "weights"), ("labels",)


@dataclass(frozen=True)
class _Report:
    """What one rank tells every other after a phase: its error, or (a tokenizing rank) where its arrays are."""

    rank: int
    failure: tuple[type[SeqclsError], str] | None = None  # the error's class (to keep its exit code) and reason
    facts: Prepared | None = None  # tokenizing ranks: the splits without text or arrays
    folder: str = ""  # tokenizing ranks: the folder of .npy files


def once_per_host(world: World, stage: Callable[[], Prepared], run_id: str, timeout_s: int) -> Prepared:
    """Run `stage` (read, split, tokenize) on each host's local rank 0 and share its arrays with the host's
    other ranks; `data_ready` says which ranks tokenized and which mapped. One process: just `stage`."""
    if not world.active:
        prepared = stage()
        data.log_ready(prepared, {"summary": "read and tokenized by the only process", "tokenized_by": [world.rank],
                                  "mapped_by": []})
        return prepared
    folder: Path | None = None
    try:
        if world.local_rank == 0:
            prepared, folder, report, error = _lead(stage, run_id, world)
        else:  # waits in the exchange while its host's local rank 0 works
            prepared, report, error = None, _Report(world.rank), None
        leads = _exchange(report, world, timeout_s, error)
        if world.local_rank:
            prepared, report, error = _follow(leads[world.leader], world)
        _exchange(report, world, timeout_s, error)
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)  # every rank has mapped it (or the stage failed everywhere)
    tokenizers = [r.rank for r in leads if r.folder]
    data.log_ready(prepared, {
        "summary": f"read and tokenized once per host, by rank(s) {', '.join(map(str, tokenizers))}; the other "
                   f"{world.size - len(tokenizers)} rank(s) mapped their host's arrays",
        "tokenized_by": tokenizers, "mapped_by": [r.rank for r in leads if not r.folder],
        "shared_folders": [r.folder for r in leads if r.folder]})
    return prepared


def _lead(stage: Callable[[], Prepared], run_id: str,
          world: World) -> tuple[Prepared | None, Path | None, _Report, Exception | None]:
    """The tokenizing rank: run the stage, write its arrays, and use the mapped files itself (one copy per host)."""
    folder = None
    try:
        prepared = stage()
        folder = Path(tempfile.mkdtemp(prefix=f"seqcls-data-{re.sub(r'[^A-Za-z0-9._-]', '_', run_id)}-"))
        _write(prepared.encoded, folder)
        prepared = dataclasses.replace(prepared, encoded=_map(folder, list(prepared.encoded)))
        return prepared, folder, _Report(world.rank, facts=prepared.without_text(), folder=str(folder)), None
    except Exception as err:  # noqa: BLE001 - told to every rank, then re-raised here
        return None, folder, _Report(world.rank, failure=_describe(err)), err


def _follow(lead: _Report, world: World) -> tuple[Prepared | None, _Report, Exception | None]:
    """A rank that maps its host's arrays: the tokenizing rank's facts, with its files as the token arrays."""
    try:
        encoded = _map(Path(lead.folder), list(lead.facts.stats))
        return dataclasses.replace(lead.facts, encoded=encoded), _Report(world.rank), None
    except Exception as err:  # noqa: BLE001 - told to every rank, then re-raised here
        message = (f"rank {world.rank} cannot map the token arrays rank {lead.rank} wrote to {lead.folder} "
                   f"({type(err).__name__}: {err}): the ranks with LOCAL_RANK > 0 must run on the same host as "
                   "their LOCAL_RANK 0, as torchrun starts them")
        return None, _Report(world.rank, failure=(SeqclsError, message)), SeqclsError(message)


def _describe(err: Exception) -> tuple[type[SeqclsError], str]:
    """The class other ranks raise (a user error stays one: same exit code) and the reason they give."""
    if isinstance(err, SeqclsError):
        return type(err), str(err)
    return SeqclsError, f"internal error: {type(err).__name__}: {err}"


def _exchange(report: _Report, world: World, timeout_s: int, error: Exception | None) -> list[_Report]:
    """Every rank's report, in rank order; raises this rank's own error, else the first other rank's."""
    try:
        reports = distributed.gather_objects(report, world)
    except RuntimeError as err:  # gloo/NCCL: a peer that died, or a timeout
        raise SeqclsError(f"the data stage's exchange between ranks failed ({str(err).splitlines()[0][:300]}): a rank "
                          f"died (its own log says why) or took longer than distributed_timeout_s={timeout_s}; raise "
                          "it for a data set that takes longer to read and tokenize") from error or err
    if error is not None:
        raise error
    failed = next((r for r in reports if r.failure), None)
    if failed is not None:
        kind, reason = failed.failure
        raise kind(f"rank {failed.rank} failed in the data stage (reading and tokenizing for its host): {reason}")
    return reports


def _write(encoded: dict[str, Encoded], folder: Path) -> None:
    for name, split in encoded.items():
        for field in MAPPED_FIELDS + COPIED_FIELDS:
            array = getattr(split, field)
            if array is not None:
                np.save(folder / f"{name}.{field}.npy", array)


def _map(folder: Path, names: list[str]) -> dict[str, Encoded]:
    def load(name: str, field: str) -> np.ndarray | None:
        path = folder / f"{name}.{field}.npy"
        if field == "weights" and not path.exists():
            return None
        return np.load(path) if field in COPIED_FIELDS else np.load(path, mmap_mode="r")

    return {name: Encoded(**{field: load(name, field) for field in MAPPED_FIELDS + COPIED_FIELDS}) for name in names}
