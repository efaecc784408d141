"""The core: what every command stands on. Errors, atomic files, tensor names, the one door to
TensorFlow's private APIs (`tfcompat`), the GraphDef toolkit (`graph`), weight sources (`weights`),
and loading a model in any form (`model`, with `legacy`, `tf2` and `kerasfile` for TF1-era graphs,
TF2 SavedModels and Keras files), plus the manifest that describes a folder of pieces.

Imports only the standard library, numpy, h5py and TensorFlow: nothing else of `surgery`.
"""
