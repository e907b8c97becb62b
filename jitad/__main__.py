"""``python -m jitad``: the seed examples and micrograd's training loop (see demo.py)."""

from .demo import main

main()
