"""Which machine this is, in the words its owner would recognise: the CPU's model name. The
numerics battery records it beside its hashes, and the benchmark beside its timings
(benchmarks/bench.py imports it from here)."""
import platform


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
