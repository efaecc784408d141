# Everything runs from a project-local virtual environment that `make` creates and fills
# from pyproject.toml, so a fresh clone needs nothing but Python 3.10+.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: demo test lint docs fuzz zoo data models bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# PYTHONWARNINGS: setuptools' "Editable installation" banner is a warning, not news (#33)
	PYTHONWARNINGS=ignore $(PY) -m pip install --quiet -e '.[test,beam,viz,tflite,onnx,spark,docs]'
	touch $(STAMP)

data/shapes.h5: scripts/make_data.py | $(STAMP)
	$(PY) scripts/make_data.py --out data/shapes.h5

data/models/vgg/model.ckpt.index: scripts/build_vgg.py data/shapes.h5 | $(STAMP)
	$(PY) scripts/build_vgg.py --data data/shapes.h5 --out data/models/vgg

data: data/shapes.h5
models: data/models/vgg/model.ckpt.index

demo: $(STAMP) data models
	$(PY) scripts/demo.py

# ruff's default rules plus import sorting, as configured in pyproject.toml
lint: $(STAMP)
	$(VENV)/bin/ruff check .

# the documentation site into site/ (docs/, mkdocs.yml); --strict: a broken link or reference fails
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir site

# two workers (CI has two cores), each taking whole test files: 6.5 min here instead of 12
test: $(STAMP)
	$(PY) -m pytest tests -n 2 --dist loadfile --durations=15

# hostile GraphDefs, checkpoints and manifests against every command (tests/test_fuzz.py);
# SURGERY_FUZZ_N cases per kind (3 kinds), SURGERY_FUZZ_RANDOM=1 for a new random draw each run
fuzz: $(STAMP)
	SURGERY_FUZZ_N=$${SURGERY_FUZZ_N:-400} $(PY) -m pytest tests/test_fuzz.py -q -p no:cacheprovider

# every keras.applications architecture, every format, every layer name (scripts/zoo.py): long
zoo: $(STAMP)
	$(PY) scripts/zoo.py --all --json zoo.json

bench: $(STAMP) data models
	$(PY) scripts/bench.py

clean:
	rm -rf demo-out data/*.h5 data/models
