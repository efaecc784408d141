"""Spark's Python daemon (`pyspark.daemon`), with TensorFlow imported once, before it forks the workers.

Spark starts one daemon per worker environment, and the daemon forks a Python worker for each
task slot. pyspark's own daemon imports nothing first, so every worker imports TensorFlow itself
(~2 s of CPU each, while the driver imports it too, on the same cores). This daemon imports it
first and the workers inherit it. Those imports start no thread that a fork would lose (numpy's
OpenBLAS pool has fork handlers); pyarrow, which does, is left to the workers, as pyspark does.

Local masters only (`spark._preloading_daemon`, via `spark.python.daemon.module`).
"""

if __name__ == "__main__":
    try:
        import pyspark.worker  # noqa: F401 - what every task imports first

        from surgery import data, precompute  # noqa: F401 - TensorFlow, and what a task imports
    except Exception:
        pass
    from pyspark import daemon

    daemon.manager()
