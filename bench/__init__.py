"""revsnn benchmarks: kernel time, memory kept for backward, network memory (issue 4).

``python -m bench --help`` from the repository root. Sections: ``bench.kernels`` (node time and
effective bandwidth), ``bench.memory`` (bytes a node keeps for backward per neuron per step),
``bench.network`` (kept-for-backward bytes or peak training memory of spiking VGG and ResNet
models). The node implementations compared live in ``bench.nodes``; measurement, tables and the
record of the machine in ``bench.common``. After a run: ``python -m bench.summary`` (headline
against the targets), ``python -m bench.report`` (the tables of bench/RESULTS.md) and
``python -m bench.plots`` (redraw the PNGs), each with ``--out DIR``. Diagnostics of their own:
``python -m bench.sweep`` (launch configurations, host time per call; GPU) and
``python -m bench.peak`` (a training step's peak memory, taken apart).
"""
