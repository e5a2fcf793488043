"""softmaso: hard, soft and beta vector quantization in deep networks.

Reproduces Balestriero & Baraniuk, "From Hard to Soft: Understanding Deep Network
Nonlinearities via Vector Quantization and Statistical Inference" (ICLR 2019).
Heavy dependencies (torch, pandas, matplotlib) are imported by the modules that need them,
never here, so that `softmaso --help` stays instant.
"""

__version__ = "0.1.0"
