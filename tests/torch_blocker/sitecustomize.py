"""Put this directory on PYTHONPATH to make importing torch, cv2 or PIL fail in every Python
process started with it (subprocesses included): the device side's proof that it needs none."""

import sys

BLOCKED = {"torch", "cv2", "PIL"}


class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked for the device-side test: {name}")
        return None


sys.meta_path.insert(0, _Block())
