"""Ahead-of-time compile check of every Triton kernel, for GPUs this machine does not have.

Triton compiles for a GPU target with no GPU present (`triton.compile(ASTSource(...),
target=GPUTarget("cuda", 90, 32))`, its bundled ptxas), and the bundled `cuobjdump -res-usage`
reads the cubin's registers, stack (spilled registers) and shared memory. `configurations()`
lists what the launchers really pick (kernels.gemm.gemm_config, kernels.mdwa_triton.mdwa_config)
for every dtype, M bucket, head dim and QK8 setting; `check(cfg, arch)` compiles one and reports

    regs, stack (bytes of spilled registers), shared (bytes), wgmma (Hopper warp-group MMA in the
    PTX), limit (the architecture's shared memory per block)

tests/test_compile.py asserts the limits; `python -m kernels.compile_check` prints the table.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

# largest dynamic shared memory per block (bytes): A100 (sm_80) 163 KB, H100/H200 (sm_90) 227 KB
SHARED_LIMIT = {80: 166912, 90: 232448}
PTR = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.int8: "*i8",
       torch.uint8: "*u8", torch.int32: "*i32"}


@dataclass(frozen=True)
class Config:
    """One launch configuration: the kernel, its argument types, constexprs, warps and stages."""

    name: str
    kernel: str  # w8a8 | w4a8 | w4a16 | mdwa
    signature: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, object], ...]
    num_warps: int
    num_stages: int
    fast_path: bool  # what the GPU runtime runs (bf16 / fp16 / int8 at real sizes): must not spill
    big_tile: bool  # a tile Hopper's warp-group MMA should take (>= 64 rows, >= 4 warps)
    notes: dict = field(default_factory=dict, compare=False)


def _fn(kernel: str):
    if kernel == "mdwa":
        from litevar.kernels.mdwa_triton import _kernel
        return _kernel(False)
    from litevar.kernels import gemm_triton
    return getattr(gemm_triton, f"{kernel}_kernel")


def _named(kernel: str, types: list[str]) -> tuple[tuple[str, str], ...]:
    """The kernel's leading (runtime) arguments, by name, with the given types."""
    names = _fn(kernel).arg_names
    return tuple(zip(names[:len(types)], types))


def _split(cfg: dict) -> tuple[dict, int, int]:
    cfg = dict(cfg)
    return cfg, cfg.pop("num_warps", 4), cfg.pop("num_stages", 3)


def _int_gemm(kind: str, M: int, out: torch.dtype) -> Config:
    from litevar.kernels.gemm import gemm_config
    consts, warps, stages = _split(gemm_config(kind, M))
    types = ["*i8", "*i8" if kind == "w8a8" else "*u8", PTR[out]] + ["*fp32"] * 5 + ["i32"] * 9
    sig = _named(kind, types)
    consts.update(HAS_ZA=True, HAS_BIAS=True)
    return Config(f"{kind} M={M} out={str(out)[6:]}", kind, tuple(sig), tuple(consts.items()), warps, stages,
                  fast_path=M > 128, big_tile=consts["BLOCK_M"] >= 64 and warps >= 4)


def _w4a16(M: int, dtype: torch.dtype, group: int | None) -> Config:
    from litevar.kernels.gemm import gemm_config
    consts, warps, stages = _split(gemm_config("w4a16", M, dtype, group))
    sig = _named("w4a16", [PTR[dtype], "*u8", PTR[dtype]] + ["*fp32"] * 3 + ["i32"] * 11)
    consts.update(GROUP_SIZE=group or consts["BLOCK_K"], HAS_ZW=True, HAS_BIAS=True, DOT_F32=False)
    return Config(f"w4a16 M={M} x={str(dtype)[6:]} group={group or 'channel'}", "w4a16", tuple(sig),
                  tuple(consts.items()), warps, stages, fast_path=M > 128 and dtype != torch.float32,
                  big_tile=consts["BLOCK_M"] >= 64 and warps >= 4)


def _mdwa(dtype: torch.dtype, head_dim: int, qk_int8: bool, kv_bits: int = 16) -> Config:
    from litevar.kernels.mdwa_triton import mdwa_config
    consts, warps, stages = _split(mdwa_config(dtype, head_dim, qk_int8, kv_bits))
    qk = "*i8" if qk_int8 else PTR[dtype]
    kv = {16: PTR[dtype], 8: "*i8", 4: "*u8"}[kv_bits]
    types = [qk, kv if not qk_int8 else qk, kv, PTR[dtype], "*fp32", "*fp32"] + ["*i32"] * 3 + ["*fp16"] * 4
    sig = _named("mdwa", types + ["i32"] * 20 + ["fp32"])
    consts.update(HEAD_DIM=head_dim, QK_INT8=qk_int8, KV_BITS=kv_bits, DOT_F32=False)
    kv_name = f" kv{kv_bits}" if kv_bits < 16 else ""
    return Config(f"mdwa {str(dtype)[6:]} d={head_dim} qk8={qk_int8}{kv_name}", "mdwa", tuple(sig),
                  tuple(consts.items()), warps, stages, fast_path=dtype != torch.float32 and head_dim == 64,
                  big_tile=consts["BLOCK_M"] >= 64 and warps >= 4)


def configurations() -> list[Config]:
    """Every configuration the launchers pick on a GPU: GEMMs per M bucket (32: an explicit
    TRITON call below AUTO's threshold, 64..128, and larger), output / activation dtype; MDWA per
    dtype, head dim (64: VAR's; 16: the smallest tested), QK8, and over KV8 / KV4 caches."""
    out = []
    for kind in ("w8a8", "w4a8"):
        out += [_int_gemm(kind, M, dt) for M in (32, 128, 4096) for dt in (torch.bfloat16, torch.float32)]
    out += [_w4a16(M, dt, 128) for M in (32, 128, 4096) for dt in (torch.bfloat16, torch.float16, torch.float32)]
    out.append(_w4a16(4096, torch.bfloat16, None))
    out += [_mdwa(dt, d, q8) for dt in (torch.bfloat16, torch.float32) for d in (64, 16) for q8 in (False, True)]
    out += [_mdwa(dt, 64, False, bits) for dt in (torch.bfloat16, torch.float32) for bits in (8, 4)]
    return out


def _bin(name: str) -> str:
    import triton
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if not path.is_file():
        raise FileNotFoundError(f"{name} is not bundled with this triton ({path})")
    return str(path)


def available() -> str | None:
    """None when the check can run here, else why not (Triton, its CUDA backend or tools missing)."""
    try:
        import triton  # noqa: F401
        from triton.backends.compiler import GPUTarget  # noqa: F401
        _bin("ptxas"), _bin("cuobjdump")
    except (ImportError, FileNotFoundError) as e:
        return str(e)
    return None


def check(cfg: Config, arch: int) -> dict:
    """Compile `cfg` for sm_`arch`; its resources (see the module docstring)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    sig = dict(cfg.signature) | {k: "constexpr" for k, _ in cfg.constexprs}
    src = ASTSource(fn=_fn(cfg.kernel), signature=sig, constexprs=dict(cfg.constexprs))
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the default; silences triton 3.9's notice
    k = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                       options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.cubin"
        path.write_bytes(k.asm["cubin"])
        usage = subprocess.run([_bin("cuobjdump"), "-res-usage", str(path)], capture_output=True, text=True,
                               check=True).stdout
    fields = dict(re.findall(r"(REG|STACK|LOCAL):(\d+)", usage))
    return {"name": cfg.name, "arch": arch, "regs": int(fields["REG"]), "stack": int(fields["STACK"]),
            "local": int(fields.get("LOCAL", 0)), "shared": int(k.metadata.shared),
            "limit": SHARED_LIMIT[arch], "wgmma": "wgmma.mma_async" in k.asm["ptx"],
            "warps": cfg.num_warps, "stages": cfg.num_stages, "fast_path": cfg.fast_path, "big_tile": cfg.big_tile}


def report(archs=(80, 90), workers: int | None = None) -> list[dict]:
    """check() of every configuration for every arch, compiled in a process pool."""
    from concurrent.futures import ProcessPoolExecutor
    jobs = [(c, a) for a in archs for c in configurations()]
    with ProcessPoolExecutor(workers or min(4, os.cpu_count() or 1)) as pool:
        return list(pool.map(_check_job, jobs))


def _check_job(job):
    return check(*job)


def format_table(rows: list[dict]) -> str:
    head = f"{'configuration':42} {'arch':>5} {'warps':>5} {'stages':>6} {'regs':>5} {'stack':>6} {'shared B':>9} wgmma"
    lines = [head] + [f"{r['name']:42} sm_{r['arch']:<2} {r['warps']:>5} {r['stages']:>6} {r['regs']:>5} "
                      f"{r['stack']:>6} {r['shared']:>9} {'yes' if r['wgmma'] else 'no'}" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    why = available()
    if why:
        raise SystemExit(f"compile check unavailable: {why}")
    print(format_table(report()))
