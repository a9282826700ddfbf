import sys

from cocohanere_jax.search.cli import main

sys.exit(main())
