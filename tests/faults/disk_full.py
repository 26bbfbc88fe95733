# Fault injection, copied by the test into an IPYTHONDIR startup folder so that it runs in the notebook
# kernel only: every file opened for writing under $IFT_FAULT_DIR fails as on a full disk.
import builtins
import errno
import os

_dir, _open = os.path.realpath(os.environ["IFT_FAULT_DIR"]), builtins.open


def _full_disk_open(file, mode="r", *args, **kwargs):
    if isinstance(file, (str, os.PathLike)) and set(mode) & set("wax+") \
            and os.path.realpath(file).startswith(_dir):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
    return _open(file, mode, *args, **kwargs)


builtins.open = _full_disk_open
