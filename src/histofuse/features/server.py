"""One extraction process serving many slides' ``extract_features`` jobs (``features.server: true``).

Each job of the DAG stays a job (one features file per slide, its own log, its own rerun and
exclusion), but the work is done by a long-lived server that has paid Python's, torch's and the
encoder's start-up (imports, CUDA context, weights to the device) once. A job's process is a thin
client: it connects to the server over a Unix socket, sends the slide, relays the server's log
lines to its own log and exits with the outcome.

A server is keyed on everything that makes its work differ: the encoder, its weights, the
extraction settings, the threads, the Python and histofuse it runs, the GPUs it may see, and the
cluster job it belongs to (``SLURM_JOB_ID``). So a SLURM group job of ``slide_features`` slides
(``profiles/slurm``) starts one server for its slides; a local run starts one per configuration.
The first client of a key starts the server (under a file lock, so two never race) and waits for
it to listen; a server with no work for ``idle_s`` seconds exits. A client that finds a dead
server's socket starts a new one. When a client goes away mid-slide (its job was cancelled),
the server stops that slide and writes nothing. Deleting a server's socket file stops it once its
running jobs are done (the idle timeout does the same on its own).

Requests run one at a time on a GPU or with loader workers; on the CPU without workers they run
side by side (each thread uses the job's threads), as separate job processes did.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from histofuse import __version__
from histofuse.errors import HistofuseError
from histofuse.features.extract_job import EncoderSpec, ExtractJob

log = logging.getLogger(__name__)

__all__ = ["ServerError", "absolute_paths", "runtime_dir", "server_key", "submit"]

START_TIMEOUT_S = 600.0
"""Longest wait for a new server to listen (imports and weights of a large encoder)."""
_KEY_ENV = ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES")
_SOCKET_MAX = 100


class ServerError(HistofuseError):
    """The extraction server could not be reached or ended mid-job."""


def runtime_dir() -> Path:
    """Node-local folder of the servers' sockets, locks and logs (``HISTOFUSE_RUNTIME_DIR`` to move it)."""
    path = Path(os.environ.get("HISTOFUSE_RUNTIME_DIR") or f"/tmp/histofuse-{os.getuid()}")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def server_key(spec: EncoderSpec) -> str:
    """What identifies the server that may run jobs of ``spec`` in this environment."""
    import histofuse

    identity = {
        "spec": spec.to_json(),
        "python": sys.executable,
        "histofuse": [__version__, str(Path(histofuse.__file__).parent)],
        "env": {name: os.environ.get(name, "") for name in _KEY_ENV},
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------- client


def absolute_paths(job: ExtractJob, spec: EncoderSpec) -> tuple[ExtractJob, EncoderSpec]:
    """``job`` and ``spec`` with every file path absolute (a server runs in the folder it was started in)."""

    def absolute(path: str | None) -> str | None:
        return os.path.abspath(path) if path else path

    job = dataclasses.replace(job, slide=os.path.abspath(job.slide), tiles=os.path.abspath(job.tiles),
                              out=os.path.abspath(job.out))  # fmt: skip
    settings = {**spec.settings, "stain_target": absolute(spec.settings.get("stain_target"))}
    return job, dataclasses.replace(spec, weights=absolute(spec.weights), settings=settings)



def submit(job: ExtractJob, spec: EncoderSpec, *, idle_s: float) -> str:
    """Run ``job`` on the server for ``spec`` (started when none runs); its outcome.

    The server's log lines for this job go to this process's stderr.
    """
    folder = runtime_dir()
    key = server_key(spec)
    path = folder / f"{key}.sock"
    if len(str(path)) > _SOCKET_MAX:
        raise ServerError(
            f"the extraction server's socket path is too long for a Unix socket ({len(str(path))} characters).",
            path=path,
            fix="set HISTOFUSE_RUNTIME_DIR to a short node-local folder, e.g. /tmp/hf.",
        )
    for attempt in (1, 2):
        with _connected(path, key, spec, idle_s=idle_s) as conn:
            conn.sendall((json.dumps({"job": job.to_json()}) + "\n").encode())
            try:
                return _relay(conn, folder / f"{key}.log")
            except _NoReply:
                if attempt == 2:
                    raise
                log.info("the extraction server closed without a reply (it was exiting): trying again")
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _connected(path: Path, key: str, spec: EncoderSpec, *, idle_s: float) -> Iterator[socket.socket]:
    conn = _try_connect(path)
    if conn is None:
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            conn = _try_connect(path) or _start_server(path, key, spec, idle_s=idle_s)
    try:
        yield conn
    finally:
        conn.close()


def _try_connect(path: Path) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        conn.close()
        return None
    return conn


def _start_server(path: Path, key: str, spec: EncoderSpec, *, idle_s: float) -> socket.socket:
    """Start a server (detached: it outlives this job) and connect once it listens."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a dead server's socket
    log_path = path.with_suffix(".log")
    command = [sys.executable, "-m", "histofuse.features.server", "--socket", str(path)]
    command += ["--spec", json.dumps(spec.to_json()), "--idle-s", str(idle_s)]
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    log.info("started extraction server %s (pid %d, log %s)", key, process.pid, log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        conn = _try_connect(path)
        if conn is not None:
            return conn
        if process.poll() is not None:
            raise ServerError(
                f"the extraction server exited while starting (code {process.returncode}): {_tail(log_path)}",
                path=log_path,
                fix="see the server's log; `features.server: false` runs each job in its own process.",
            )
        time.sleep(0.05)
    process.terminate()
    raise ServerError(f"the extraction server did not listen within {START_TIMEOUT_S:.0f} s.", path=log_path)


class _NoReply(ServerError):
    """The server closed the connection before saying anything (e.g. it was exiting, idle)."""


def _relay(conn: socket.socket, log_path: Path) -> str:
    received = False
    for message in _messages(conn):
        received = True
        if "log" in message:
            print(message["log"], file=sys.stderr, flush=True)
        elif "done" in message:
            return str(message["done"])
        elif "error" in message:
            raise ServerError(message["error"], fix=message.get("fix"))
    if not received:
        raise _NoReply(f"the extraction server closed the connection without a reply: {_tail(log_path)}", path=log_path)
    raise ServerError(
        f"the extraction server ended in the middle of the job: {_tail(log_path)}",
        path=log_path,
        fix="rerun the job (a new server starts); see the server's log for the cause.",
    )


def _messages(conn: socket.socket) -> Iterator[dict[str, Any]]:
    with conn.makefile("r", encoding="utf-8") as stream:
        for line in stream:
            yield json.loads(line)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------------------------------- server


class _Server:
    """Listens on ``path``; runs each connection's job with the encoder built once."""

    def __init__(self, path: Path, spec: EncoderSpec, *, idle_s: float) -> None:
        import torch

        from histofuse.features.encoders import build_encoder

        torch.set_num_threads(max(1, spec.threads))
        self.spec = spec
        self.settings = spec.extract_settings()
        started = time.perf_counter()
        self.encoder = build_encoder(spec.encoder, weights=Path(spec.weights) if spec.weights else None)
        log.info("encoder %s built in %.1f s", spec.encoder, time.perf_counter() - started)
        self.idle_s = idle_s
        self.path = path
        self.active = 0
        self.last_active = time.monotonic()
        self.state = threading.Lock()
        serial = self.settings.num_workers > 0 or self.settings.device != "cpu"
        self.one_at_a_time: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if serial else contextlib.nullcontext()
        )

    def serve(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(64)
        listener.settimeout(1.0)
        log.info("serving on %s (idle timeout %.0f s)", self.path, self.idle_s)
        try:
            # removing the socket file stops the server once its jobs are done
            while not self._idle_too_long() and (self.active or self.path.exists()):
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                with self.state:
                    self.active += 1
                threading.Thread(target=self._handle, args=(conn,), daemon=True).start()
        finally:
            reason = "its socket was removed" if not self.path.exists() else f"idle for {self.idle_s:.0f} s"
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # new clients start a new server from here on
            listener.close()
            log.info("exiting: %s", reason)

    def _idle_too_long(self) -> bool:
        with self.state:
            return self.active == 0 and time.monotonic() - self.last_active > self.idle_s

    def _handle(self, conn: socket.socket) -> None:
        try:
            with conn, self.one_at_a_time, _forwarded_logs(conn):
                self._run(conn)
        except OSError:  # the client went away
            log.warning("a client went away before its reply")
        finally:
            with self.state:
                self.active -= 1
                self.last_active = time.monotonic()

    def _run(self, conn: socket.socket) -> None:
        from histofuse.features.extract import ExtractionCancelled
        from histofuse.features.extract_job import run_extract_job

        request = json.loads(conn.makefile("r", encoding="utf-8").readline())
        job = ExtractJob.from_json(request["job"])
        try:
            outcome = run_extract_job(
                job,
                encoder_name=self.spec.encoder,
                encoder=lambda: self.encoder,
                settings=self.settings,
                cancelled=lambda: _hung_up(conn),
            )
        except ExtractionCancelled as err:
            log.warning("%s", err)
            return
        except HistofuseError as err:
            _send(conn, {"error": err.render()})
            return
        except Exception as err:  # reported to the job, which fails; the server serves on
            log.exception("job for %s failed", job.slide)
            _send(conn, {"error": f"{type(err).__name__}: {err}"})
            return
        _send(conn, {"done": outcome})


def _hung_up(conn: socket.socket) -> bool:
    """Whether the client closed its end (a readable socket with nothing to read)."""
    readable, _, _ = select.select([conn], [], [], 0)
    return bool(readable) and conn.recv(1, socket.MSG_PEEK) == b""


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    conn.sendall((json.dumps(message) + "\n").encode())


class _ForwardHandler(logging.Handler):
    """Sends the records of one thread (a job's) to its client as log lines."""

    def __init__(self, conn: socket.socket, thread: int) -> None:
        super().__init__()
        self.conn = conn
        self.thread = thread
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread:
            return
        with contextlib.suppress(OSError):
            _send(self.conn, {"log": self.format(record)})


@contextlib.contextmanager
def _forwarded_logs(conn: socket.socket) -> Iterator[None]:
    handler = _ForwardHandler(conn, threading.get_ident())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="histofuse's extraction server (started by `histofuse extract`).")
    parser.add_argument("--socket", required=True, type=Path)
    parser.add_argument("--spec", required=True, help="EncoderSpec as JSON")
    parser.add_argument("--idle-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s", force=True
    )
    log.info("extraction server %s starting", args.socket.stem)
    _Server(args.socket, EncoderSpec.from_json(json.loads(args.spec)), idle_s=args.idle_s).serve()


if __name__ == "__main__":  # pragma: no cover
    main()
