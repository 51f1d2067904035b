from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from nasrun.space.base import mutate_genotype, sample_genotype
from nasrun.space.cifar_cell import CifarCellSpace
from nasrun.space.genotype import Genotype, GenotypeError
from nasrun.space.nb201 import NB201Space


def test_save_load_round_trip(tmp_path: Path) -> None:
    space = CifarCellSpace()
    g = sample_genotype(space, random.Random(0))
    g.save(tmp_path / "genotype.json")
    assert Genotype.load(tmp_path / "genotype.json") == g


def test_encode_decode_round_trip_and_mutation_changes_one_decision() -> None:
    space = CifarCellSpace()
    rng = random.Random(1)
    for _ in range(20):
        g = sample_genotype(space, rng)
        assert space.decode(space.encode(g)) == g
        m = mutate_genotype(space, g, rng)
        diff = sum(a != b for a, b in zip(space.encode(g), space.encode(m)))
        assert diff == 1


def test_malformed_json_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "genotype.json"
    p.write_text("{not json")
    with pytest.raises(GenotypeError, match="genotype.json: not valid JSON"):
        Genotype.load(p)


@pytest.mark.parametrize(
    "payload, message",
    [
        (
            {"normal": [["sep_conv_3x3"]], "normal_concat": [2]},
            r"normal\[0\]: expected \[op_name, input_index\]",
        ),
        ({"normal": [], "normal_concat": [2], "colour": 1}, "unknown key 'colour'"),
        ({"normal_concat": [2]}, "missing key 'normal'"),
    ],
)
def test_malformed_genotype_names_the_key(tmp_path: Path, payload: dict, message: str) -> None:
    p = tmp_path / "g.json"
    p.write_text(json.dumps(payload))
    with pytest.raises(GenotypeError, match=message):
        Genotype.load(p)


def test_space_rejects_unknown_op_and_bad_inputs() -> None:
    space = CifarCellSpace()
    g = sample_genotype(space, random.Random(0))
    bad_op = Genotype(
        normal=(("conv_9x9", 0),) + g.normal[1:],
        normal_concat=g.normal_concat,
        reduce=g.reduce,
        reduce_concat=g.reduce_concat,
    )
    with pytest.raises(GenotypeError, match=r"genotype.normal\[0\]: unknown operation 'conv_9x9'"):
        space.validate(bad_op)
    bad_input = Genotype(
        normal=(("sep_conv_3x3", 2),) + g.normal[1:],
        normal_concat=g.normal_concat,
        reduce=g.reduce,
        reduce_concat=g.reduce_concat,
    )
    with pytest.raises(GenotypeError, match="node 2 cannot take input 2"):
        space.validate(bad_input)


def test_each_space_refuses_the_other_spaces_genotype_and_says_how_to_select_it() -> None:
    nb201, cifar = NB201Space(), CifarCellSpace()
    nb201_genotype = sample_genotype(nb201, random.Random(0))
    with pytest.raises(
        GenotypeError,
        match=r"belongs to space 'nb201', not 'cifar_cell' \(select its space with space=nb201\)",
    ):
        cifar.validate(nb201_genotype)
    with pytest.raises(GenotypeError, match="belongs to space 'cifar_cell', not 'nb201'.*space=cifar_cell"):
        nb201.validate(sample_genotype(cifar, random.Random(0)))
    # A genotype that fits the cell space's structure is still refused if it says it is nb201's.
    g = sample_genotype(cifar, random.Random(1))
    relabelled = Genotype(g.normal, g.normal_concat, g.reduce, g.reduce_concat, space="nb201")
    with pytest.raises(GenotypeError, match="belongs to space 'nb201'"):
        cifar.validate(relabelled)


def test_derivation_keeps_two_strongest_edges_with_their_best_non_none_op() -> None:
    ops = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"]
    space = CifarCellSpace(layers=3, channels=4, nodes=2, ops=ops)
    w = torch.zeros(5, 4)  # node 2: edges 0,1; node 3: edges 2,3,4 (inputs 0,1,2)
    w[0] = torch.tensor([0.9, 0.0, 0.0, 0.1])  # huge `none` must be ignored: best real op sep_conv
    w[1] = torch.tensor([0.0, 0.2, 0.0, 0.0])  # max_pool
    w[2] = torch.tensor([0.0, 0.0, 0.0, 0.0])  # weakest edge of node 3
    w[3] = torch.tensor([0.0, 0.0, 0.3, 0.0])  # skip_connect, strongest
    w[4] = torch.tensor([0.0, 0.0, 0.0, 0.1])  # sep_conv
    g = space.derive({"normal": w, "reduce": w})
    assert g.normal == (("max_pool_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 1), ("sep_conv_3x3", 2))
    assert g.normal_concat == (2, 3)
