"""A class-data archive for Spark's driver JVM on a local master (Java's application class-data
sharing, AppCDS).

A local Spark run spends seconds of its start-up loading and verifying some 15,000 classes from
Spark's jars; with the classes mapped ready-made from an archive, the 200k-row benchmark takes
15.0 s instead of 17.0 s on `local[2]` (medians of 5). Java 17 makes such an archive in two steps,
and neither may slow the run the user waits for:

1. The first local run lists the classes its JVM loads (`-XX:DumpLoadedClassList`: no measurable
   cost). Recording while running instead (`-XX:ArchiveClassesAtExit`) made that run 12 s slower.
2. Once that JVM has exited, a detached process at the lowest CPU priority writes the archive from
   the list (`java -Xshare:dump`: about 30 s of one core, 165 MB), under a temporary name and then
   renamed, so a run never sees half an archive.

A list from a run that wrote no Parquet (a typo in a column name, a test's bare session) lacks the
classes of the job itself (Parquet, Arrow: 2,300 of them, 0.4 s of every later run), so no
archive is made from it and the next run lists again.

Later runs map the archive (`-XX:SharedArchiveFile`). Java checks it against its own version and
the class path (each jar's size and time) and quietly runs without it if they differ, so an archive
left by another Spark or Java costs nothing but the time it no longer saves.

`SURGERY_SPARK_CLASS_CACHE=off` turns this off; `=DIR` keeps the archive in DIR (default
`$XDG_CACHE_HOME/surgery/spark`, else `~/.cache/surgery/spark`).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

ENV = "SURGERY_SPARK_CLASS_CACHE"
QUIET = "-Xshare:auto -Xlog:cds=off -Xlog:cds+dynamic=off"  # a stale or foreign archive: no warnings
BUILD_TIMEOUT_S = 900
JOB_CLASS = "org/apache/parquet/hadoop/ParquetOutputFormat"  # in the list of a run that wrote its output
STALE_LOCK_S = 1200  # a build that has held its lock this long died: the next run may try again


def _directory() -> str | None:
    chosen = os.environ.get(ENV, "")
    if chosen.lower() in ("off", "0", "false", "no"):
        return None
    if chosen:
        return chosen
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "surgery", "spark")


def _key() -> str:
    """Which Java and which Spark: one archive each (the JVM checks the details itself)."""
    import pyspark

    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java") or "java"
    jars = os.path.join(os.path.dirname(os.path.abspath(pyspark.__file__)), "jars")
    text = "\n".join([os.path.realpath(java), pyspark.__version__, os.path.realpath(jars)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ClassArchive:
    """The archive for this Java and this Spark: `jvm_options()` for the driver, then
    `build_after(jvm)` once the driver is up if this run records the class list."""

    def __init__(self, path: str):
        self.path = path
        self.classes = self.path + ".classes"
        self.lock = self.path + ".building"
        self.failed = self.path + ".failed"  # a build that failed: not tried again (delete it to retry)
        self.recording = False

    @classmethod
    def for_this_spark(cls) -> ClassArchive | None:
        directory = _directory()
        if directory is None:
            return None
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError:  # a read-only home: run without
            return None
        return cls(os.path.join(directory, f"spark-{_key()}.jsa"))

    def jvm_options(self) -> str:
        """Map the archive if there is one; else record the class list if no other run does."""
        if os.path.exists(self.path):
            return f"-XX:SharedArchiveFile={self.path} {QUIET}"
        if os.path.exists(self.failed) or not self._take_lock():
            return ""
        self.recording = True
        return f"-XX:DumpLoadedClassList={self.classes}"

    def _take_lock(self) -> bool:
        try:
            if time.time() - os.path.getmtime(self.lock) > STALE_LOCK_S:
                os.remove(self.lock)
        except OSError:
            pass
        try:
            os.close(os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except OSError:
            return False
        for left in glob.glob(glob.escape(self.path) + ".tmp-*"):  # a killed build's half archive
            _remove(left)
        return True

    def release(self) -> None:
        """This run will not record after all (it failed before its JVM came up)."""
        if self.recording:
            self.recording = False
            for path in (self.lock, self.classes):
                _remove(path)

    def build_after(self, jvm) -> None:
        """Start the detached builder: it waits for this driver JVM (`jvm`, py4j's view) to exit,
        when its class list is complete, then writes the archive."""
        if not self.recording:
            return
        try:
            system = jvm.java.lang.System
            arguments = list(jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
            spec = {
                "pid": int(jvm.java.lang.ProcessHandle.current().pid()),
                "java": os.path.join(str(system.getProperty("java.home")), "bin", "java"),
                "class_path": str(system.getProperty("java.class.path")),
                # the module graph and the collector must be the ones the runs will use
                "options": [a for a in map(str, arguments) if a.startswith(("--add-modules", "-XX:+Use"))],
                "path": self.path,
            }
        except Exception:
            self.release()
            return
        self.recording = False
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
        subprocess.Popen([sys.executable, "-c", "import sys, json; from surgery.runners.classcache import build; "
                          "build(json.loads(sys.argv[1]))", json.dumps(spec)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=env, start_new_session=True, close_fds=True)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _lists(class_list: str, name: str) -> bool:
    try:
        with open(class_list) as f:
            return any(line.split(None, 1)[0] == name for line in f if line.strip())
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def build(spec: dict) -> None:
    """The detached builder (see the module docstring): runs in its own process, never raises."""
    archive = ClassArchive(spec["path"])
    tmp = f"{archive.path}.tmp-{os.getpid()}"
    try:
        deadline = time.time() + BUILD_TIMEOUT_S
        while _alive(spec["pid"]) and time.time() < deadline:
            time.sleep(0.2)
        if not _lists(archive.classes, JOB_CLASS):
            return  # the `finally` frees the lock: the next run lists its classes
        os.nice(19)
        command = [spec["java"], "-Xshare:dump", f"-XX:SharedClassListFile={archive.classes}",
                   f"-XX:SharedArchiveFile={tmp}", "-cp", spec["class_path"], *spec["options"], *QUIET.split()[1:]]
        try:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, timeout=BUILD_TIMEOUT_S)
            why = None if done.returncode == 0 and os.path.getsize(tmp) else \
                f"exit {done.returncode}: {done.stderr.decode(errors='replace')[-2000:]}"
        except (OSError, subprocess.TimeoutExpired) as e:
            why = str(e)
        if why is None:
            os.replace(tmp, archive.path)
        else:
            with open(archive.failed, "w") as f:
                f.write(" ".join(command) + "\n" + why + "\n")
    finally:
        for path in (tmp, archive.classes, archive.lock):
            _remove(path)
