"""Every Triton kernel, with every configuration its launcher can pick, compiles ahead of time
for sm_80 (A100) and sm_90 (H100/H200) within their limits (kernels/compile_check.py; no GPU
needed). Skips only where Triton or its bundled ptxas / cuobjdump is absent."""
import pytest

from litevar.kernels import compile_check as CC

why = CC.available()
pytestmark = pytest.mark.skipif(why is not None, reason=f"compile check unavailable: {why}")


@pytest.fixture(scope="module")
def rows():
    r = CC.report(workers=2)
    print("\n" + CC.format_table(r))  # registers and shared memory per configuration (pytest -s)
    return r


def test_every_configuration_is_checked(rows):
    names = {r["name"] for r in rows}
    assert {r["arch"] for r in rows} == {80, 90} and len(rows) == 2 * len(CC.configurations())
    assert any("qk8=True" in n and "d=16" in n for n in names)  # the int8 dot with the smallest head dim
    assert any("x=float32" in n for n in names)  # fp32 activations (the CPU-style cost stage's dtype)


def test_shared_memory_within_the_architecture(rows):
    bad = [f"{r['name']} sm_{r['arch']}: {r['shared']} B > {r['limit']} B" for r in rows if r["shared"] > r["limit"]]
    assert not bad, bad


def test_no_register_spills_on_the_fast_path(rows):
    bad = [f"{r['name']} sm_{r['arch']}: {r['stack']} B of spills ({r['regs']} registers)" for r in rows
           if r["fast_path"] and (r["stack"] or r["local"])]
    assert not bad, bad


def test_hopper_takes_warp_group_mma_in_the_large_tiles(rows):
    bad = [r["name"] for r in rows if r["arch"] == 90 and r["big_tile"] and not r["wgmma"]]
    assert not bad, f"no wgmma on sm_90 in {bad}"
