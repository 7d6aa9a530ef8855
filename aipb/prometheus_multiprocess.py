"""prometheus_client multiprocess mode, fitted to RQ's forking worker.

With PROMETHEUS_MULTIPROC_DIR set, every process keeps its counters and histograms in
mmap'ed files named after a *process identifier* (``counter_<id>.db``), and /metrics adds
up every file in the directory. prometheus_client's identifier is the pid. That is right
for gunicorn workers and RQ worker processes, but RQ's forking worker starts a new
work-horse process per job: with pids, every job would leave its own set of files behind,
and since a scrape reads every file, scrape time would grow with the number of jobs ever
run (measured: 600 files after 200 jobs, a 60 ms file merge per scrape instead of 1 ms).

So a work-horse writes under its worker's *slot*, ``<worker pid>-horse``, instead of its
own pid (``install()`` puts ``LazyMultiProcessValue`` into prometheus_client, and
``jobs.worker.AIPBWorker`` calls ``enter_work_horse()`` first thing in the horse):

- a worker runs one horse at a time and waits for it to exit (or kills it) before forking the
  next, and the worker itself writes under its own pid, so no two live processes ever write
  under the same identifier (prometheus_client's one rule for a custom identifier);
- the identifier changes at fork, so the horse's first write closes the mmaps it inherited
  and re-reads every value from the slot's files: each horse continues the counts of the
  horses before it, and nothing a finished horse wrote is lost;
- a process opens files only when it first writes a metric, so processes that never count
  anything (each worker's main process, RQ's scheduler, the worker pool, metrics_server,
  one-off `manage.py` commands) leave no files behind;
- files therefore grow with the number of *processes started that counted something*
  (gunicorn workers, RQ workers' horse slots, AIPBSimpleWorker processes), never with the
  number of jobs: 3 files (counter, histogram, django-rq's summary) per such process.

Counters of dead processes stay in their files and keep being reported, as they must (a
counter that dropped when a process exits would read as a reset). Gauges set inside a
process need an explicit ``multiprocess_mode`` (the ``live*`` modes drop a dead process's
value; gunicorn's ``child_exit`` hook removes those files). aipb's own gauges are computed
at scrape time (monitoring.collectors) and are not kept in files at all.

Deployments: the directory must exist and be empty before the web app and the workers of a
host start, and be the same directory for all of them (``make run`` wipes ./var/metrics;
a systemd unit would use e.g. ``RuntimeDirectory=`` or ``ExecStartPre=`` on the first
service of the host). Wiping it while processes run would make their later writes
invisible; not wiping it between deployments keeps reporting the counts of processes long
gone. On a host that runs both the web app and workers with one directory, the web app's
/metrics already includes the workers: scrape it *or* ``metrics_server``, not both.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from prometheus_client import values as pc_values
from prometheus_client.mmap_dict import MmapedDict, mmap_key

ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"

# (pid of this work-horse, identifier it writes under); None outside a work-horse.
_horse: tuple[int, str] | None = None


def directory() -> str:
    return os.environ.get(ENV_VAR, "")


def enabled() -> bool:
    return bool(directory())


def process_identifier() -> int | str:
    """The name of this process's metric files: its pid, or its worker's slot in a work-horse."""
    pid = os.getpid()
    horse = _horse
    if horse is not None and horse[0] == pid:
        return horse[1]
    return pid


def horse_identifier(worker_pid: int) -> str:
    # no "_": prometheus_client splits file names on it
    return f"{worker_pid}-horse"


def enter_work_horse(*, worker_pid: int) -> None:
    """Called in a freshly forked work-horse: from now on write under the worker's slot."""
    global _horse
    pid = os.getpid()
    if pid == worker_pid:  # not a fork (the job runs in the worker itself): keep the pid
        return
    _horse = (pid, horse_identifier(worker_pid))


def install(path: str) -> None:
    """Make every metric value created from now on a ``LazyMultiProcessValue``.

    Must run before any metric value exists in the process (aipb.settings calls it), so that
    django-prometheus's metrics, django-rq's and ours all live in the same bounded set of files.
    """
    if not path.strip() or path != path.strip() or not Path(path).is_dir():
        raise ImproperlyConfigured(
            f"{ENV_VAR}={path!r} is not a directory: create it (empty) before starting the web app and the workers"
        )
    if not getattr(pc_values.ValueClass, "_aipb", False):
        pc_values.ValueClass = LazyMultiProcessValue()


def LazyMultiProcessValue():  # noqa: N802 - a class factory, like prometheus_client.values.MultiProcessValue
    """prometheus_client's MultiProcessValue (same files, same format, read by the same
    MultiProcessCollector), with two differences:

    - files are named by ``process_identifier`` (a work-horse writes under its worker's slot);
    - a process opens its files on its first *write*, not when a metric object is created.
      Every Django process imports django-prometheus and django-rq, which create metric
      objects at import; with prometheus_client's class every `manage.py` command, RQ's
      scheduler process and each worker's main process would leave files behind without
      ever counting anything. When a process does open its files, every value it knows is
      written to them at once (a histogram's buckets all appear, counters start at 0),
      exactly as prometheus_client does.

    After a fork (new identifier) the first write closes the inherited files and re-reads every
    value from this identifier's files, so a work-horse continues its slot's counts.
    """
    files: dict = {}
    known: list = []
    opened_as: dict = {"identifier": None}  # whose files `files` holds; None: none opened in this process yet
    lock = threading.Lock()  # one lock, as prometheus_client: MmapedDict is not thread safe

    def open_files(identifier) -> None:  # lock held
        for f in files.values():
            f.close()
        files.clear()
        opened_as["identifier"] = identifier
        for value in known:
            value._attach()

    def ensure_open() -> None:  # lock held
        identifier = process_identifier()
        if opened_as["identifier"] != identifier:
            open_files(identifier)

    def cleanup() -> None:
        with lock:
            for f in files.values():
                f.close()
            files.clear()
            known.clear()
            opened_as["identifier"] = None

    pc_values._multi_process_cleanups.append(cleanup)

    class LazyMmapedValue:
        _multiprocess = True
        _aipb = True

        def __init__(self, typ, metric_name, name, labelnames, labelvalues, help_text, multiprocess_mode="", **kwargs):
            self._prefix = f"{typ}_{multiprocess_mode}" if typ == "gauge" else typ
            self._key = mmap_key(metric_name, name, labelnames, labelvalues, help_text)
            self._value = 0.0
            self._timestamp = 0.0
            self._file = None
            with lock:
                known.append(self)
                if opened_as["identifier"] is not None and opened_as["identifier"] == process_identifier():
                    self._attach()

        def _attach(self) -> None:  # lock held
            if self._prefix not in files:
                filename = os.path.join(directory(), f"{self._prefix}_{opened_as['identifier']}.db")
                files[self._prefix] = MmapedDict(filename)
            self._file = files[self._prefix]
            self._value, self._timestamp = self._file.read_value(self._key)

        def inc(self, amount):
            with lock:
                ensure_open()
                self._value += amount
                self._timestamp = 0.0
                self._file.write_value(self._key, self._value, self._timestamp)

        def set(self, value, timestamp=None):
            with lock:
                ensure_open()
                self._value = value
                self._timestamp = timestamp or 0.0
                self._file.write_value(self._key, self._value, self._timestamp)

        def set_exemplar(self, exemplar):
            return  # not supported in multiprocess mode (as in prometheus_client)

        def get(self):
            with lock:
                ensure_open()
                return self._value

        def get_exemplar(self):
            return None

    return LazyMmapedValue
