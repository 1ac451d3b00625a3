"""Add exact copies of a few images to a data set: the setting in which diffusion models copy."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

logger = logging.getLogger(__name__)


def add_duplicates(table: pa.Table, *, num_images: int, copies: int, seed: int) -> pa.Table:
    """Append `copies` copies of `num_images` randomly chosen rows, with new ids after the largest.

    The chosen source ids are stored in the schema metadata under b"duplicated_ids".
    """
    if num_images == 0 or copies == 0:
        return table
    if num_images > table.num_rows:
        raise ValueError(f"data.duplicate_images={num_images} exceeds the {table.num_rows} images of the data set")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(table.num_rows, size=num_images, replace=False))
    repeated = table.take(pa.array(np.repeat(chosen, copies)))
    first_new_id = int(pc.max(table.column("id")).as_py()) + 1
    new_ids = pa.array(np.arange(first_new_id, first_new_id + repeated.num_rows, dtype=np.int64))
    id_index = repeated.schema.get_field_index("id")
    repeated = repeated.set_column(id_index, repeated.schema.field(id_index), new_ids)
    combined = pa.concat_tables([table, repeated])
    source_ids = table.column("id").to_numpy()[chosen]
    metadata = dict(table.schema.metadata or {})
    metadata[b"duplicated_ids"] = ",".join(str(i) for i in source_ids).encode()
    logger.info("added %d copies of each of %d images: %d samples in all", copies, num_images, combined.num_rows)
    return combined.replace_schema_metadata(metadata)
