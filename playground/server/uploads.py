"""Where the playground's uploads live, and how long: the app's own folder (data_dir/uploads), swept
by Gradio of files older than UPLOAD_KEEP_SECONDS, and held under a size cap here (oldest first).

One upload request carries at most one file of at most --max-upload-mb (the gate counts both), so
the cap bounds what a burst of uploads can take between sweeps.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

UPLOAD_KEEP_SECONDS = 3600  # an uploaded clip stays usable this long (it is encoded at once anyway)
UPLOAD_SWEEP_SECONDS = 300  # how often Gradio deletes what is older
CAP_CHECK_SECONDS = 15.0
UPLOADS_SHARE_OF_DISK = 4  # uploads may hold a quarter of --max-disk-mb

log = logging.getLogger(__name__)


def start_uploads(data_dir: Path, max_disk_mb: int) -> Path:
    """Point Gradio's upload folder at data_dir/uploads (before any Blocks exists) and keep it capped."""
    folder = (Path(data_dir) / "uploads").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    cap = (max_disk_mb << 20) // UPLOADS_SHARE_OF_DISK
    threading.Thread(target=_keep_capped, args=(folder, cap), name="uploads-cap", daemon=True).start()
    return folder


def _keep_capped(folder: Path, cap_bytes: int) -> None:
    while True:
        time.sleep(CAP_CHECK_SECONDS)
        try:
            trim(folder, cap_bytes)
        except OSError as exc:  # a file removed under us: next round
            log.warning("upload cap: %s", exc)


def trim(folder: Path, cap_bytes: int) -> int:
    """Delete the oldest files until the folder holds at most cap_bytes; returns the bytes freed."""
    files = []
    for path in folder.rglob("*"):
        st = path.lstat()
        if path.is_file() and not path.is_symlink():
            files.append((st.st_mtime, st.st_size, path))
    total, freed = sum(size for _, size, _ in files), 0
    for _, size, path in sorted(files):
        if total - freed <= cap_bytes:
            break
        path.unlink(missing_ok=True)
        freed += size
    if freed:
        log.info("upload cap: removed %d bytes of the oldest uploads", freed)
    return freed
