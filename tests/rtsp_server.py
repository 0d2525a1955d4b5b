"""A real RTSP server on loopback for the tests: GStreamer's, run with the system Python.

    /usr/bin/python3 tests/rtsp_server.py PORT
    /usr/bin/python3 tests/rtsp_server.py --check   # exit 0 if everything it needs is installed

Serves rtsp://127.0.0.1:PORT/cam, an H.264 test pattern at 320x240 and 15
fps, prints "ready" once it listens, and runs until killed. It needs
Debian's python3-gi, gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-ugly
(x264) and gstreamer1.0-rtsp, which `make test` installs.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

PIPELINE = (
    "( videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=15/1 "
    "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! rtph264pay name=pay0 pt=96 )"
)


def main() -> None:
    Gst.init(None)
    if sys.argv[1] == "--check":
        missing = [name for name in ("videotestsrc", "x264enc", "rtph264pay") if not Gst.ElementFactory.find(name)]
        sys.exit(f"missing GStreamer elements: {', '.join(missing)}" if missing else 0)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(sys.argv[1])
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(PIPELINE)
    factory.set_shared(True)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on port {sys.argv[1]}")
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
