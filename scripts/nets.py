"""Reference architectures built with their original variable names, in tf.compat.v1 graph mode.

Used by the demo builder, the tests and the benchmarks. No weights are downloaded: every
network here is built and, where a script says so, trained on data generated in `data/`.
"""

from __future__ import annotations

from surgery.core.tfcompat import tf  # TensorFlow without its C++ start-up chatter

v1 = tf.compat.v1

VGG16_BLOCKS = (2, 2, 3, 3, 3)
VGG16_WIDTHS = (64, 128, 256, 512, 512)


def _conv(net, out_channels: int, kernel: int, scope: str, padding: str = "SAME", relu: bool = True):
    """A TF-slim style conv layer: `scope/weights`, `scope/biases`, op `scope/Relu`."""
    with v1.variable_scope(scope):
        w = v1.get_variable("weights", [kernel, kernel, int(net.shape[-1]), out_channels],
                            initializer=v1.variance_scaling_initializer(2.0))
        b = v1.get_variable("biases", [out_channels], initializer=v1.zeros_initializer())
        net = tf.nn.bias_add(tf.nn.conv2d(net, w, strides=[1, 1, 1, 1], padding=padding), b)
        return tf.nn.relu(net, name="Relu") if relu else net


def dense(inputs, units: int, name: str, activation=None):
    """A `tf.compat.v1.layers.dense` look-alike (`name/kernel`, `name/bias`): that API is gone
    under Keras 3, and checkpoints written with it keep these names."""
    with v1.variable_scope(name):
        kernel = v1.get_variable("kernel", [int(inputs.shape[-1]), units],
                                 initializer=v1.glorot_uniform_initializer())
        bias = v1.get_variable("bias", [units], initializer=v1.zeros_initializer())
        out = tf.nn.bias_add(tf.matmul(inputs, kernel), bias)
        return activation(out) if activation is not None else out


def vgg(inputs, num_classes: int, *, blocks=VGG16_BLOCKS, widths=VGG16_WIDTHS, fc_width: int = 4096,
        scope: str = "vgg_16", aliases: bool = True):
    """TF-slim's `vgg_16` layout and names (`vgg_16/conv1/conv1_1/weights`, …, `vgg_16/fc8/biases`).

    Fully connected layers are convolutions as in slim (`fc6` spans the last feature map).
    With `aliases`, top-level Identity ops `fc6`, `fc7`, `fc8` make `fc7:0` a tensor name.
    Returns logits [batch, num_classes].
    """
    net = inputs

    def alias(net4d, name):  # `name:0` = the [batch, C] activation, on the path to the logits
        if not aliases:
            return net4d
        squeezed = tf.squeeze(net4d, [1, 2])
        with v1.get_default_graph().name_scope(None):  # a top-level name
            flat = tf.identity(squeezed, name=name)
        return flat[:, None, None, :]

    with v1.variable_scope(scope):
        for b, (n, width) in enumerate(zip(blocks, widths), start=1):
            with v1.variable_scope(f"conv{b}"):
                for i in range(1, n + 1):
                    net = _conv(net, width, 3, f"conv{b}_{i}")
            net = tf.nn.max_pool2d(net, 2, 2, "VALID", name=f"pool{b}")
        net = _conv(net, fc_width, int(net.shape[1]), "fc6", padding="VALID")
        net = _conv(alias(net, "fc6"), fc_width, 1, "fc7")
        net = _conv(alias(net, "fc7"), num_classes, 1, "fc8", relu=False)
        logits = tf.squeeze(net, [1, 2], name="fc8/squeezed")
    if aliases:
        with v1.get_default_graph().name_scope(None):
            logits = tf.identity(logits, name="fc8")
    return logits


def vgg_16(num_classes: int = 1000, image_size: int = 224, aliases: bool = False):
    """The full VGG-16 (138,357,544 parameters at 1000 classes) in the current default graph.

    Placeholder `input` [?, 224, 224, 3] → `vgg_16/predictions` (softmax). Returns (input, probabilities).
    """
    images = v1.placeholder(tf.float32, [None, image_size, image_size, 3], name="input")
    logits = vgg(images, num_classes, aliases=aliases)
    return images, tf.nn.softmax(logits, name="vgg_16/predictions")


def two_tower(num_items: int = 500, item_features: int = 32, user_features: int = 16, dim: int = 32,
              tower_width: int = 128):
    """A recommender: an item tower (heavy, offline) and a user tower (live), scored by a dot product
    and a small MLP. Names: `item_features`, `user_features` placeholders, `item_tower/embedding`,
    `user_tower/embedding`, `score`."""
    items = v1.placeholder(tf.float32, [None, item_features], name="item_features")
    users = v1.placeholder(tf.float32, [None, user_features], name="user_features")
    with v1.variable_scope("item_tower"):
        h = items
        for i in range(3):
            h = dense(h, tower_width, activation=tf.nn.relu, name=f"dense_{i}")
        item_emb = tf.identity(dense(h, dim, name="project"), name="embedding")
    with v1.variable_scope("user_tower"):
        u = dense(users, tower_width // 2, activation=tf.nn.relu, name="dense_0")
        user_emb = tf.identity(dense(u, dim, name="project"), name="embedding")
    with v1.variable_scope("scorer"):
        joint = tf.concat([item_emb * user_emb, item_emb, user_emb], axis=1)
        h = dense(joint, 32, activation=tf.nn.relu, name="dense")
        logit = tf.squeeze(dense(h, 1, name="logit"), [1])
    return items, users, tf.sigmoid(logit, name="score")


def write_mlp_pieces(directory: str, *, features: int, hidden, dim: int, seed: int = 0) -> str:
    """A split directory (`offline.pb` + `manifest.json`) whose offline piece is a frozen MLP
    `x` [?, features] → relu(hidden) (one layer per width when `hidden` is a tuple) → `emb` [?, dim],
    as `surgery split` would write it."""
    from surgery.core.manifest import write_manifest
    from surgery.passes.freeze import freeze_graph, write_graph_def

    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(seed)
        x = v1.placeholder(tf.float32, [None, features], name="x")
        with v1.variable_scope("mlp", use_resource=False):
            h, width = x, features
            widths = tuple(hidden) if isinstance(hidden, (tuple, list)) else (hidden,)
            for i, w in enumerate(widths, start=1):
                h = tf.nn.relu(tf.matmul(h, v1.get_variable(f"w{i}", [width, w])) + v1.get_variable(f"b{i}", [w]))
                width = w
            out = tf.matmul(h, v1.get_variable(f"w{len(widths) + 1}", [width, dim]))
        emb = tf.identity(out, name="emb")
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            frozen = freeze_graph(graph, [emb], inputs=[x],
                                  read_variable=lambda n: sess.run(graph.get_tensor_by_name(n + ":0")))
            write_graph_def(frozen, f"{directory}/offline.pb")  # values are read while writing
    write_manifest(directory, source={"path": "scripts/nets.py:write_mlp_pieces"},
                   pieces={"offline": frozen.manifest_entry("offline.pb")})
    return directory


def trained_classifier(directory: str, *, features: int = 16, classes: int = 4, rows: int = 2000,
                       steps: int = 300, seed: int = 0) -> tuple[str, str]:
    """A small classifier trained to high accuracy on Gaussian blobs: `x` [?, features] → relu 64 →
    `hidden` (relu 32, the cut the tests compress) → `probs` [?, classes]. Writes the checkpoint
    `DIR/model.ckpt` and `DIR/data.h5` (`x`, `y` to train on; `test_x`, `test_y` held out).
    Returns (checkpoint prefix, data file)."""
    import os

    import h5py
    import numpy as np

    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=2.0, size=(classes, features)).astype(np.float32)
    y = rng.integers(0, classes, 2 * rows)
    x = (centers[y] + rng.normal(size=(2 * rows, features))).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(seed)
        inputs = v1.placeholder(tf.float32, [None, features], name="x")
        labels = v1.placeholder(tf.int64, [None], name="y")
        with v1.variable_scope("net", use_resource=False):
            h = dense(inputs, 64, "fc1", tf.nn.relu)
            h = tf.identity(dense(h, 32, "fc2", tf.nn.relu), name="hidden")
            logits = dense(h, classes, "logits")
        tf.nn.softmax(logits, name="probs")
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        train = v1.train.AdamOptimizer(0.01).minimize(loss)
        saver = v1.train.Saver()
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            for step in range(steps):
                batch = rng.integers(0, rows, 128)
                sess.run(train, {inputs: x[batch], labels: y[batch]})
            prefix = saver.save(sess, os.path.join(directory, "model.ckpt"))
    data = os.path.join(directory, "data.h5")
    with h5py.File(data, "w") as f:
        f["x"], f["y"], f["test_x"], f["test_y"] = x[:rows], y[:rows], x[rows:], y[rows:]
    return prefix, data
