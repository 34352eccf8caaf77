"""Start a throwaway PostgreSQL server on loopback for tests.

``start_postgres(base_dir)`` runs ``initdb`` for a fresh cluster, starts it on
127.0.0.1 on a free TCP port with trust authentication, creates the database
``proxytune_test`` and returns a :class:`PostgresServer` (``.url``,
``.stop()``). On any failure it returns a string saying why; it never raises.

PostgreSQL refuses to run as root. When this process is root, every server
command (``initdb``, ``pg_ctl``) runs as an unprivileged user (``postgres`` if
it exists, else ``nobody``) through ``runuser`` (or ``su``), and the cluster
directory is chowned to that user. If that user cannot reach ``base_dir``
(pytest's ``/tmp/pytest-of-root`` is mode 0700, for instance), the cluster goes
into a fresh ``tempfile.mkdtemp`` directory instead, which ``stop()`` removes.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

DB_NAME = "proxytune_test"
SUPERUSER = "postgres"
START_TIMEOUT_S = 30.0
# Unix socket paths are limited to ~107 bytes (sun_path); leave room for the
# "/.s.PGSQL.NNNNN" suffix.
_MAX_SOCKET_DIR_LEN = 80

_SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
_CLIENT_BINARIES = ("createdb", "pg_isready")


def _tail(text: str | bytes | None, lines: int = 20) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return "\n".join(text.strip().splitlines()[-lines:])


def _version_key(path: str) -> tuple:
    # /usr/lib/postgresql/15/bin -> (15,); non-numeric parts sort first.
    part = Path(path).parent.name
    return tuple(int(p) if p.isdigit() else -1 for p in re.split(r"[.]", part))


def find_bin_dir() -> Path | str:
    """Directory holding initdb, pg_ctl and postgres, or a reason string."""
    candidates: list[Path] = []
    env_dir = os.environ.get("PROXYTUNE_PG_BIN")
    if env_dir:
        candidates.append(Path(env_dir))
    for name in ("pg_ctl", "initdb"):
        found = shutil.which(name)
        if found:
            # /usr/local/bin/pg_ctl may be a symlink into /usr/lib/postgresql/N/bin;
            # the real directory also holds the ``postgres`` binary.
            candidates.append(Path(os.path.realpath(found)).parent)
            candidates.append(Path(found).parent)
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        candidates.append(Path(d))
    seen: list[Path] = []
    for d in candidates:
        if d in seen:
            continue
        seen.append(d)
        if all(os.access(d / b, os.X_OK) for b in _SERVER_BINARIES):
            return d
    looked = ", ".join(str(d) for d in seen) or "(nothing found)"
    return (
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH "
        f"or in /usr/lib/postgresql/*/bin; looked in: {looked}. "
        "Install the Debian 'postgresql' package (apt-get install postgresql)."
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env() -> dict[str, str]:
    # PGHOST/PGPORT/PGDATA/... from the caller must not redirect our commands.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    return env


@dataclass
class _Runner:
    """Runs server commands, as ``user`` when this process is root."""

    user: str | None  # None: run as the current user
    uid: int = -1
    gid: int = -1

    def argv(self, cmd: list[str]) -> list[str]:
        if self.user is None:
            return cmd
        if shutil.which("runuser"):
            return ["runuser", "-u", self.user, "--", *cmd]
        return ["su", self.user, "-s", "/bin/sh", "-c", shlex.join(cmd)]

    def run(self, cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.argv(cmd),
            cwd=str(cwd),
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
        )

    def chown_tree(self, path: Path) -> None:
        if self.user is None:
            return
        os.chown(path, self.uid, self.gid)
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(root, name), self.uid, self.gid, follow_symlinks=False)


def _make_runner() -> _Runner | str:
    if os.geteuid() != 0:
        return _Runner(user=None)
    if not (shutil.which("runuser") or shutil.which("su")):
        return "running as root, and neither runuser nor su is available to drop to an unprivileged user"
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        if pw.pw_uid != 0:
            return _Runner(user=name, uid=pw.pw_uid, gid=pw.pw_gid)
    return "running as root and no unprivileged user ('postgres' or 'nobody') exists to run the server as"


def _run_checked(runner: _Runner, cmd: list[str], cwd: Path, timeout: float, what: str) -> str | None:
    """Run ``cmd``; None on success, else a reason string."""
    try:
        proc = runner.run(cmd, cwd, timeout)
    except subprocess.TimeoutExpired as e:
        return f"{what} timed out after {timeout:.0f} s; output tail:\n{_tail(e.output)}"
    except OSError as e:
        return f"{what} could not be executed ({' '.join(runner.argv(cmd))}): {e}"
    if proc.returncode != 0:
        return f"{what} failed with exit code {proc.returncode}; output tail:\n{_tail(proc.stdout)}"
    return None


@dataclass
class PostgresServer:
    url: str
    host: str
    port: int
    user: str
    dbname: str
    root_dir: Path  # the directory holding data/, sock/ and server.log
    bin_dir: Path
    _runner: _Runner = field(repr=False)
    _remove_root: bool = field(default=False, repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.root_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.root_dir / "server.log"

    def pause(self, mode: str = "fast") -> None:
        """Stop the server but keep its data, as a restart for maintenance does (``fast``: open connections are
        cut; ``immediate``: a crash, recovered from the WAL at the next start). :meth:`resume` starts it again."""
        err = _run_checked(self._runner, [str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", mode,
                                          "-w", "-t", "30"], self.root_dir, timeout=40, what="pg_ctl stop")
        if err:
            raise RuntimeError(err)

    def resume(self) -> None:
        """Start a paused server again on the same port, and wait until it accepts connections."""
        err = _run_checked(self._runner, [str(self.bin_dir / "pg_ctl"), "start", "-D", str(self.data_dir), "-l",
                                          str(self.log_file), "-w", "-t", str(int(START_TIMEOUT_S))],
                           self.root_dir, timeout=START_TIMEOUT_S + 15, what="pg_ctl start")
        if err:
            raise RuntimeError(err)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _server_ready(self.bin_dir, self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not accept connections again within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the server (idempotent, never raises)."""
        if self._stopped:
            return
        self._stopped = True
        pg_ctl = str(self.bin_dir / "pg_ctl")
        for mode in ("fast", "immediate"):
            try:
                proc = self._runner.run(
                    [pg_ctl, "stop", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "30"],
                    self.root_dir,
                    timeout=40,
                )
                if proc.returncode == 0:
                    break
            except (subprocess.TimeoutExpired, OSError):
                pass
        if self._remove_root:
            shutil.rmtree(self.root_dir, ignore_errors=True)


def _server_ready(bin_dir: Path, port: int) -> bool:
    pg_isready = bin_dir / "pg_isready"
    if os.access(pg_isready, os.X_OK):
        try:
            proc = subprocess.run(
                [str(pg_isready), "-q", "-h", "127.0.0.1", "-p", str(port), "-U", SUPERUSER, "-d", "postgres"],
                env=_clean_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=5,
            )
            return proc.returncode == 0
        except (subprocess.TimeoutExpired, OSError):
            return False
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _pick_root_dir(base_dir: Path, runner: _Runner) -> tuple[Path, bool] | str:
    """Directory for the cluster: base_dir if usable, else a fresh temp dir."""
    try:
        base_dir = Path(base_dir).resolve()
        base_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"cannot create base_dir {base_dir}: {e}"
    usable = len(str(base_dir / "sock")) <= _MAX_SOCKET_DIR_LEN
    if usable and runner.user is not None:
        try:
            runner.chown_tree(base_dir)
        except OSError as e:
            return f"cannot chown {base_dir} to {runner.user}: {e}"
        check = runner.run(["test", "-w", str(base_dir), "-a", "-x", str(base_dir)], base_dir.parent, 30)
        usable = check.returncode == 0
    if usable:
        return base_dir, False
    try:
        tmp = Path(tempfile.mkdtemp(prefix="proxytune-pg-"))
        runner.chown_tree(tmp)
    except OSError as e:
        return f"base_dir {base_dir} is not usable by the server user, and no temp dir could be made: {e}"
    try:
        (base_dir / "CLUSTER_LOCATION").write_text(f"{tmp}\n")
    except OSError:
        pass
    return tmp, True


def start_postgres(base_dir: Path) -> PostgresServer | str:
    """Start a fresh PostgreSQL cluster on 127.0.0.1; a reason string on failure."""
    try:
        return _start(Path(base_dir))
    except Exception as e:  # never raise: the caller skips with the reason
        return f"unexpected error while starting PostgreSQL: {type(e).__name__}: {e}"


def _start(base_dir: Path) -> PostgresServer | str:
    bin_dir = find_bin_dir()
    if isinstance(bin_dir, str):
        return bin_dir
    missing = [b for b in _CLIENT_BINARIES[:1] if not os.access(bin_dir / b, os.X_OK)]
    if missing:
        return f"{', '.join(missing)} not found in {bin_dir}"
    runner = _make_runner()
    if isinstance(runner, str):
        return runner
    picked = _pick_root_dir(base_dir, runner)
    if isinstance(picked, str):
        return picked
    root_dir, remove_root = picked
    data_dir, sock_dir, log_file = root_dir / "data", root_dir / "sock", root_dir / "server.log"

    def fail(reason: str) -> str:
        if remove_root:
            shutil.rmtree(root_dir, ignore_errors=True)
        return reason

    try:
        sock_dir.mkdir(mode=0o700, exist_ok=True)
        runner.chown_tree(sock_dir)
    except OSError as e:
        return fail(f"cannot create socket dir {sock_dir}: {e}")

    err = _run_checked(
        runner,
        [
            str(bin_dir / "initdb"),
            "-D", str(data_dir),
            "--username", SUPERUSER,
            "--auth", "trust",
            "--encoding", "UTF8",
            "--no-locale",
            "--no-sync",
        ],
        root_dir,
        timeout=180,
        what=f"initdb (as {runner.user or 'current user'})",
    )
    if err:
        return fail(err)

    server = None
    reason = ""
    for _attempt in range(3):  # the free port can be taken between pick and bind
        port = _free_port()
        conf = (
            "\n# proxytune test server\n"
            "listen_addresses = '127.0.0.1'\n"
            f"port = {port}\n"
            f"unix_socket_directories = '{sock_dir}'\n"
            "max_connections = 200\n"
            "shared_buffers = 32MB\n"
            "fsync = off\n"
            "synchronous_commit = off\n"
            "full_page_writes = off\n"
            "logging_collector = off\n"
        )
        try:
            with open(data_dir / "postgresql.auto.conf", "a") as f:
                f.write(conf)  # later settings win, so retries just append
        except OSError as e:
            return fail(f"cannot write {data_dir / 'postgresql.auto.conf'}: {e}")
        err = _run_checked(
            runner,
            [str(bin_dir / "pg_ctl"), "start", "-D", str(data_dir), "-l", str(log_file),
             "-w", "-t", str(int(START_TIMEOUT_S))],
            root_dir,
            timeout=START_TIMEOUT_S + 15,
            what="pg_ctl start",
        )
        if err is None:
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline and not _server_ready(bin_dir, port):
                time.sleep(0.2)
            if _server_ready(bin_dir, port):
                server = PostgresServer(
                    url=f"postgresql+psycopg2://{SUPERUSER}@127.0.0.1:{port}/{DB_NAME}",
                    host="127.0.0.1",
                    port=port,
                    user=SUPERUSER,
                    dbname=DB_NAME,
                    root_dir=root_dir,
                    bin_dir=bin_dir,
                    _runner=runner,
                    _remove_root=remove_root,
                )
                break
            err = f"server did not accept connections on 127.0.0.1:{port} within {START_TIMEOUT_S:.0f} s"
            # stop whatever half-started before retrying on another port
            runner.run([str(bin_dir / "pg_ctl"), "stop", "-D", str(data_dir), "-m", "immediate"], root_dir, 40)
        log = ""
        try:
            log = _tail(log_file.read_text(errors="replace"))
        except OSError:
            pass
        reason = f"{err}\nserver log tail ({log_file}):\n{log}"
        if "already in use" not in log and "could not bind" not in log:
            break
    if server is None:
        return fail(reason)

    try:
        proc = subprocess.run(
            [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(server.port), "-U", SUPERUSER, DB_NAME],
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=60,
        )
        if proc.returncode != 0:
            server.stop()
            return fail(f"createdb {DB_NAME} failed with exit code {proc.returncode}:\n{_tail(proc.stdout)}")
    except (subprocess.TimeoutExpired, OSError) as e:
        server.stop()
        return fail(f"createdb {DB_NAME} failed: {e}")

    atexit.register(server.stop)  # backstop if the caller never stops it
    return server
