"""Label-matched fakes: fake row i has the class of real row i (official VAR DDO recipe)."""
import dataclasses

import pytest
import torch

from ddo_lib import data as data_lib
from ddo_lib import train
from ddo_lib.config import DDOConfig
from ddo_lib.edm.family import EDMFamily


def test_label_matched_indices_match_and_are_reproducible():
    pool = torch.arange(100) % 10
    wanted = torch.tensor([3, 3, 7, 0, 9, 3])
    first = data_lib.label_matched_indices(pool, wanted, torch.Generator().manual_seed(5))
    assert torch.equal(pool[first], wanted)
    again = data_lib.label_matched_indices(pool, wanted, torch.Generator().manual_seed(5))
    assert torch.equal(first, again)
    spread = data_lib.label_matched_indices(pool, torch.full((400,), 4), torch.Generator().manual_seed(0))
    assert len(torch.unique(spread)) == 10            # every class-4 row of the pool gets drawn
    with pytest.raises(ValueError, match="no row with label 11"):
        data_lib.label_matched_indices(pool, torch.tensor([11]), torch.Generator())


def test_step_inputs_pair_real_and_fake_classes_only_when_asked():
    images, labels = data_lib.load_digits_dataset(8)
    dataset = data_lib.make_dataset(images[:100], labels[:100], name="digits-100")
    pool = (images[100:300], labels[100:300])
    cfg = DDOConfig(batch_size=16)
    family = EDMFamily()
    plain = train.step_inputs(family, dataset, pool, cfg, 0, 3)
    matched = train.step_inputs(family, dataset, pool, dataclasses.replace(cfg, match_labels=True), 0, 3)
    assert torch.equal(matched.fake_labels, matched.real_labels)
    assert not torch.equal(plain.fake_labels, plain.real_labels)
    assert torch.equal(plain.real, matched.real) and torch.equal(plain.draws["noise"], matched.draws["noise"])
