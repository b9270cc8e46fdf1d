"""Benchmarks: they measure (throughput, engine overhead, time to a table); tests assert behaviour.

`make bench` (= `python -m bench.run`) writes bench/results/<name>.json and bench/results/README.md. The other
modules here measure one model each (bench.mvtec_throughput, bench.shanghaitech_throughput).
"""
