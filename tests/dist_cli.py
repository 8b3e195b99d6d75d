"""litevar's CLI with one rank dying: under torchrun, rank 1 exits hard (no cleanup, as a killed
process would) when the named sharded step LITEVAR_TEST_DIE_AT starts (profiler.quality.run_sharded)."""
import os
import sys

from litevar.profiler import quality as Q

if os.environ.get("LITEVAR_TEST_DIE_AT") and os.environ.get("RANK") == "1":
    measure = Q.run_sharded

    def dying(fn, items, desc=None, progress=False):
        if desc == os.environ["LITEVAR_TEST_DIE_AT"]:
            os._exit(3)
        return measure(fn, items, desc, progress)
    Q.run_sharded = dying

from litevar.commands.cli import main  # noqa: E402 - after the patch, as the test wants

sys.exit(main(sys.argv[1:]))
