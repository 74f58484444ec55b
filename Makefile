# Two commands set up a fresh machine and do the work: `make demo` (the main job on the embedded
# default model) and `make test`. Both install what is missing first and are safe to repeat.
PYTHON ?= python3
DEMO_OUT ?= demo-out

.PHONY: setup test-setup demo test check-coinstall

setup:
	$(PYTHON) -m pip install -q --disable-pip-version-check -e ".[dev]"

# The tests' SAM2 reference (vanilla-sam2 parity): a source-only package, built against the torch just
# installed (its isolated build would download a second torch).
# napari's widget tests need an X server (napari draws with OpenGL, which Qt's offscreen platform does not give
# it): Xvfb and the two xcb libraries PyQt6's xcb platform needs, from Debian's packages where they are missing;
# without them those tests skip, saying what to install.
test-setup: setup
	SAM2_BUILD_CUDA=0 $(PYTHON) -m pip install -q --disable-pip-version-check --no-build-isolation "sam2>=1.1"
	@(command -v Xvfb >/dev/null && ldconfig -p | grep -q libxcb-icccm.so.4 && ldconfig -p | grep -q libxcb-keysyms.so.1) \
	  || (apt-get update -qq && apt-get install -y -qq xvfb libxcb-icccm4 libxcb-keysyms1 >/dev/null) \
	  || echo "make test-setup: no Xvfb (apt-get failed): the napari widget tests will skip"

# `pip install nnunetv2` beside emseg-rt (a SAMDA user has nnU-Net): a pip dry run against the index, nothing is
# installed; fails when it would break or downgrade anything emseg-rt needs (scripts/check_coinstall.py).
check-coinstall: setup
	$(PYTHON) scripts/check_coinstall.py nnunetv2

demo: setup
	$(PYTHON) -m emseg_rt demo --out $(DEMO_OUT)

# One pytest worker per core (at most 4), whole files per worker so module fixtures (builds, exports) run once;
# each worker runs torch (and the CLIs it starts) on one thread (tests/conftest.py).
test: test-setup check-coinstall
	@$(PYTHON) -m pytest -q -n auto --maxprocesses 4 --dist loadfile; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc
