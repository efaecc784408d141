"""The one piece type: `Piece` in memory, lazily filled and on disk, and `open_pieces`, the one
place that decides whether a path is a MODEL or a folder of pieces."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import run_graph_def

from surgery import LoadOptions, Piece, TensorSpec, freeze_model, load_model, open_pieces, split_model, write_split
from surgery.core.errors import ModelLoadError, SurgeryError
from surgery.core.graph import read_graph_def, write_graph_def
from surgery.core.manifest import piece_digest


@pytest.fixture(scope="module")
def pieces_dir(small_ckpt, tmp_path_factory):
    model = load_model(small_ckpt[0])
    directory = str(tmp_path_factory.mktemp("pieces") / "split")
    write_split(model, split_model(model, "net/fc1/Relu", "probs"), directory, verify=2)
    return directory


def test_a_frozen_piece_is_lazy_until_written_and_writes_what_it_holds(small_ckpt, sample_images, tmp_path):
    prefix, expected, _ = small_ckpt
    piece = freeze_model(load_model(prefix), "probs")
    assert isinstance(piece, Piece) and piece.format == "frozen" and piece.path is None
    assert piece.variable_stubs(), "weights are read only when written"
    assert piece.inputs == [TensorSpec("images:0", "float32", (None, 8, 8, 3))]
    path = str(tmp_path / "f.pb")
    write_graph_def(piece, path)
    got = run_graph_def(read_graph_def(path), {"images:0": sample_images}, "probs:0")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert read_graph_def(path) == piece.graph_def
    on_disk = Piece(inputs=piece.inputs, outputs=piece.outputs, path=path)
    assert on_disk.sha256 == piece_digest(path) and on_disk.graph_def == piece.graph_def
    assert on_disk.manifest_entry("f.pb") == {"graph": "f.pb", "inputs": [t.as_dict() for t in piece.inputs],
                                              "outputs": [t.as_dict() for t in piece.outputs]}


def test_with_io_keeps_the_graph_and_changes_only_the_ends(small_ckpt):
    piece = freeze_model(load_model(small_ckpt[0]), ["probs", "net/fc1/Relu"])
    narrowed = piece.with_io(outputs=piece.outputs[:1])
    assert [t.name for t in narrowed.outputs] == ["probs:0"] and len(piece.outputs) == 2
    assert narrowed.graph_def == piece.graph_def and narrowed.sha256 == piece.sha256


def test_open_pieces_reads_a_split_directory_once_in_manifest_order(pieces_dir, small_ckpt):
    opened = open_pieces(pieces_dir)
    assert opened.is_split and list(opened.pieces) == ["offline", "online"]
    offline, online = opened.piece("offline"), opened.piece("online")
    assert offline.path == os.path.join(pieces_dir, "offline.pb") and offline.format == "frozen"
    assert offline.sha256 == piece_digest(offline.path)
    assert [t.name for t in online.inputs] == ["net/fc1/Relu:0"]
    assert online.load().is_frozen
    with pytest.raises(ModelLoadError, match="no piece 'middle'.*offline, online"):
        opened.piece("middle")
    with pytest.raises(SurgeryError, match="directory of pieces"):
        opened.model()


def test_open_pieces_on_a_model_loads_it_on_first_use_with_its_options(small_saved_model):
    opened = open_pieces(small_saved_model[0], LoadOptions(tag_set="serve"))
    assert not opened.is_split and opened.pieces == {} and opened._model is None
    assert opened.model() is opened.model() and opened.model().format.startswith("saved_model")
    with pytest.raises(ModelLoadError, match="not a directory of pieces"):
        opened.piece("offline")


def test_a_savedmodel_piece_is_read_from_its_directory(small_ckpt, tmp_path):
    model = load_model(small_ckpt[0])
    directory = str(tmp_path / "sm")
    write_split(model, split_model(model, "net/fc1/Relu", "probs", format="savedmodel"), directory, verify=2)
    offline = open_pieces(directory).piece("offline")
    assert offline.format == "savedmodel" and os.path.isdir(offline.path)
    assert offline.sha256 == piece_digest(offline.path) and offline.load().variables()
