"""Makes docs/preview-page.png and prints a scrape of /metrics: the bundled clip with a face and a plate,
played with --realtime, its preview page in headless Chromium (`make system-deps` installs it).

    python docs/preview_page.py
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from anonstream.demo import AstronautClip

HERE = Path(__file__).parent
WANTED = ("anonstream_frames_out_total", "anonstream_masks_total", "anonstream_stream_up", "anonstream_worker_info")


def main() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        clip = AstronautClip(width=960, height=540, frames=600, fps=30, plate=True).write(Path(folder) / "street.mp4")
        argv = ["run", str(clip), "--record", f"{folder}/out", "--realtime", "-q", "--metrics-port", str(port)]
        run = subprocess.Popen([sys.executable, "-m", "anonstream", *argv])
        try:
            base = f"http://127.0.0.1:{port}/"
            for _ in range(120):
                time.sleep(0.5)
                try:
                    with urllib.request.urlopen(base + "healthz", timeout=2) as answer:
                        if answer.status == 200:
                            break
                except OSError:
                    continue
            time.sleep(8)  # the chart fills in
            options = webdriver.ChromeOptions()
            options.binary_location = "/usr/bin/chromium"
            for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,760"):
                options.add_argument(argument)
            driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
            try:
                driver.get(base)
                time.sleep(3)
                driver.save_screenshot(str(HERE / "preview-page.png"))
            finally:
                driver.quit()
            with urllib.request.urlopen(base + "metrics", timeout=5) as answer:
                lines = answer.read().decode().splitlines()
            for line in lines:
                if line.startswith(WANTED) or ('stage="end_to_end"' in line and ("le=" not in line or "0.1" in line)):
                    print(line)
        finally:
            run.terminate()
            run.wait(60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
