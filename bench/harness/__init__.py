"""The shared harness of every benchmark family: paths and machine, result files, timing, report writing."""
