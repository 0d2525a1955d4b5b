# Developer commands. `make test` is the one CI runs (.ci/run): it installs what
# the tests need, then lints, type-checks and runs the test suite.
PYTHON ?= python3

.PHONY: install system-deps test lint typecheck pytest demo

# The ONNX Runtime extra: [cpu], unless a GPU build (onnxruntime-gpu, or a Jetson's NVIDIA build) is
# installed already: it runs on the CPU too, and a second runtime beside it would break both.
EXTRAS = $(shell $(PYTHON) -m pip show -q onnxruntime-gpu >/dev/null 2>&1 && echo test || echo cpu,test)

install:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"

# Debian packages for the tests: GStreamer's RTSP server, driven by the system Python (tests/rtsp_server.py),
# the browser that loads the preview page (chromium, driven by Selenium through chromium-driver), iproute2
# for the hosts made of network namespaces, and procps (ps, pkill).
# Installed only when missing; needs root or sudo.
SYSTEM_DEPS = python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp gstreamer1.0-plugins-base \
	gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly chromium chromium-driver iproute2 procps
SUDO = $(shell [ "$$(id -u)" = 0 ] || echo sudo)

system-deps:
	@{ /usr/bin/python3 tests/rtsp_server.py --check && [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] \
		&& command -v ip && command -v pkill; } >/dev/null \
		2>/dev/null || { \
		echo "installing the RTSP test server and the browser: $(SYSTEM_DEPS)"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
			--no-install-recommends $(SYSTEM_DEPS) >/dev/null; }

lint:
	ruff check .
	ruff format --check .

typecheck:
	.ci/typecheck

pytest:
	$(PYTHON) -m pytest

test: install system-deps lint typecheck pytest

demo:
	anonstream demo
