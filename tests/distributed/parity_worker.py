"""``mmpt train`` where every rank reads its rows of ONE global batch stream (tests only).

Run as ``torchrun --nproc-per-node N tests/distributed/parity_worker.py train CONFIG ...``
(or call :func:`install` in-process). The global stream is the 1-rank stream with
``batch_size x world_size`` rows per batch; rank ``r`` trains on rows
``[r * batch_size, (r + 1) * batch_size)``. So runs at different world sizes with the same
global batch see exactly the same data, and their loss curves must agree to rounding.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from mmpretrain.data.types import PackedBatch
from mmpretrain.train import loop


def rows_of(batch: PackedBatch, rows: slice) -> PackedBatch:
    """The rows ``rows`` of a text-only batch."""
    return PackedBatch(
        input_ids=batch.input_ids[rows],
        labels=batch.labels[rows],
        position_ids=batch.position_ids[rows],
        doc_ids=batch.doc_ids[rows],
        keys=batch.keys[rows],
        sources=batch.sources[rows],
    )


def install() -> None:
    """Replace the loop's batch stream by this rank's slice of the global stream."""
    real = loop.batch_stream

    def sliced(*args: Any, **kwargs: Any) -> Iterator[tuple[PackedBatch, Any]]:
        cfg, tokenizer, processors, seq_len, batch_size, seed, state, codes, rank, world = args
        stream = real(cfg, tokenizer, processors, seq_len, batch_size * world, seed, state, codes)
        for batch, after in stream:
            yield rows_of(batch, slice(rank * batch_size, (rank + 1) * batch_size)), after

    loop.batch_stream = sliced


if __name__ == "__main__":
    from mmpretrain.cli import main

    install()
    sys.exit(main(sys.argv[1:]))
