"""dcnbench: verify and benchmark deformable convolution implementations.

Importing the package costs nothing: torch, scipy and matplotlib load inside the commands that
need them, so `dcnbench --help` answers at once.
"""

__version__ = "0.1.0"
