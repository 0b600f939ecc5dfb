"""Atomic file writes: a temporary file in the same folder, then a rename."""

import csv
import io
import os
import tempfile

from cnnrun.errors import CnnrunError


def write_atomic(path, data):
    """Write `data` (str or bytes) to `path` so that a reader (or a kill) never sees half a file."""
    data = data.encode() if isinstance(data, str) else data
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    except OSError as e:  # no such folder, or not writable: name the file asked for, not the temporary one
        raise CnnrunError(f"{path}: cannot write ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_csv(path, columns, rows):
    """Rows (dicts keyed by `columns`, or sequences in their order) as a CSV file, atomically.
    None becomes an empty cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        values = [row.get(c) for c in columns] if isinstance(row, dict) else row
        writer.writerow(["" if v is None else v for v in values])
    write_atomic(path, buffer.getvalue())
