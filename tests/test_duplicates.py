import numpy as np
import pytest

from ray_iet.data.duplicates import add_duplicates
from ray_iet.data.sources import decode_images


def test_duplicates_appended_with_new_ids(digits_table):
    table = add_duplicates(digits_table, num_images=3, copies=5, seed=0)
    ids = table.column("id").to_numpy()
    assert table.num_rows == digits_table.num_rows + 15
    assert len(np.unique(ids)) == table.num_rows
    assert ids[digits_table.num_rows :].min() == digits_table.num_rows


def test_duplicates_are_exact_copies(digits_table):
    table = add_duplicates(digits_table, num_images=2, copies=3, seed=1)
    images = decode_images(table)
    source_ids = [int(i) for i in table.schema.metadata[b"duplicated_ids"].decode().split(",")]
    copies = images[digits_table.num_rows :]
    for index, source in enumerate(source_ids):
        for copy in copies[index * 3 : (index + 1) * 3]:
            assert np.array_equal(copy, images[source])


def test_no_duplicates_returns_table(digits_table):
    assert add_duplicates(digits_table, num_images=0, copies=9, seed=0) is digits_table


def test_too_many_duplicate_images_rejected(digits_table):
    with pytest.raises(ValueError, match="duplicate_images"):
        add_duplicates(digits_table, num_images=1000, copies=1, seed=0)
