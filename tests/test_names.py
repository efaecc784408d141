"""Name resolution: `fc7`, `fc7:0`, `scope/fc7/Relu:0`, scopes; close names for typos."""

import pytest
from conftest import build_small_cnn, tf, v1

from surgery import TensorNotFoundError, resolve_op, resolve_tensor, resolve_tensors
from surgery.core.names import parse_list, split_tensor_name


@pytest.fixture(scope="module")
def graph():
    g = tf.Graph()
    with g.as_default():
        build_small_cnn()
    return g


@pytest.mark.parametrize("name,expected", [
    ("probs", "probs:0"),
    ("probs:0", "probs:0"),
    ("net/fc1/Relu:0", "net/fc1/Relu:0"),
    ("fc1/Relu", "net/fc1/Relu:0"),      # unique suffix
    ("logits", "net/fc2/logits:0"),      # unique last component
    ("net/fc1", "net/fc1/Relu:0"),       # a scope with one tensor leaving it
    ("fc1", "net/fc1/Relu:0"),           # same scope by its last component
])
def test_resolves(graph, name, expected):
    assert resolve_tensor(graph, name).name == expected


def test_typo_suggests_close_names(graph):
    with pytest.raises(TensorNotFoundError) as e:
        resolve_tensor(graph, "prob")
    assert "no tensor named 'prob'" in e.value.message
    assert "'probs'" in e.value.hint


def test_typo_in_a_scoped_name(graph):
    with pytest.raises(TensorNotFoundError) as e:
        resolve_tensor(graph, "net/fc1/Relux:0")
    assert "net/fc1/Relu" in e.value.hint


def test_output_index_out_of_range(graph):
    with pytest.raises(TensorNotFoundError, match="has 1 output"):
        resolve_tensor(graph, "probs:3")


def test_ambiguous_suffix():
    g = tf.Graph()
    with g.as_default():
        a = v1.placeholder(tf.float32, name="a/out")
        tf.identity(a, name="b/out")
    with pytest.raises(TensorNotFoundError, match="ambiguous"):
        resolve_tensor(g, "out")


def test_resolve_list_and_duplicates(graph):
    assert [t.name for t in resolve_tensors(graph, "images,probs")] == ["images:0", "probs:0"]
    with pytest.raises(TensorNotFoundError, match="twice"):
        resolve_tensors(graph, ["probs", "probs:0"])


def test_resolve_op(graph):
    assert resolve_op(graph, "probs:0").name == "probs"
    with pytest.raises(TensorNotFoundError):
        resolve_op(graph, "nope")


def test_helpers():
    assert split_tensor_name("a/b:2") == ("a/b", 2)
    assert split_tensor_name("a/b") == ("a/b", None)
    assert parse_list(["a,b", " c "]) == ["a", "b", "c"]
