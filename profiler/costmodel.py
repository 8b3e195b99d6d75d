"""Cost model of a VAR on one device: fitted from measured points, evaluated on plain data.

The profiler measures (profiler/cost.py) and `fit` turns the tables into JSON-able
coefficients; everything else here is a pure function of those coefficients and an `arch`
dict (the profile's meta.model.arch), so the planner predicts without torch modules.

Latency of one generation (CFG doubles the batch: 2B rows through the transformer):

    linear  t = a + b * M*K*N + c * K*N + d * M*(K+N)            per (format, dtype), ms
    attn    t = a + b * W*kept + c * W + d * B*H*D*(q+kv)         per backend, W = B*H*D*q*kv
    e2e     sum over kernel families k of alpha_k * (their linears; attention counts as dense)
            + e0 + e1 * S*(depth+1) + e2 * B*L*(C*depth + V) + e3 * B*n_last

(S scales, L tokens, n_last tokens of the last scale). The e2e overhead (Python dispatch per
scale and block; norms, GELU and other element-wise ops, CFG mixing and top-k/top-p sampling
per token; VAE decode per latent pixel) and the alphas (in-model vs isolated kernel timings,
within ALPHA_BOUNDS; one for dense kernels, one per quantized kernel family that a fitted
generation ran, since in-model and isolated speeds differ by kernel) are fitted on the
end-to-end runs. All fits are non-negative least
squares on relative residuals (scipy.optimize.lsq_linear), so predictions grow with every
size and extrapolate to unmeasured batches and resolutions.

Peak memory (MB), the larger of two phases:

    transformer  weights by format (exact) + other VAR parameters (exact) + VAE (measured) + KV
                 cache (exact, per layer: kernels.kvcache.cache_bytes of its format, kept scales
                 and CFG rows) + m0 + m1 * activations + the largest transient: m2 * linear
                 workspace, or g * a KV call's gathered keys (kernels.kvcache.gather_bytes, exact;
                 g, fitted, is the share of them that adds to the peak)
    decode       weights + other parameters + VAE + the VQVAE decode's own peak, piecewise linear
                 in the pixels decoded through measured points (fit_decode; the KV cache is
                 freed by then)

activations = 2B * n_last * (4C + hidden + V) fp32 values (the last scale's). Linear workspace:
the largest extra memory of a quantized linear call at the last scale beyond the fp call's (its
temporaries: quantized activations, int32 accumulators, dequantized weights), from the memory
isolated calls add, fitted per format as (u*M*K + v*M*N + w*K*N) * 4 bytes. m0, m1, m2, g are fitted
on generations stopped before the decode (cost_e2e.peak_tf_mb), the decode's points on the
generations' decode phases (peak_decode_mb) and on decodes alone up to twice the largest
schedule (cost_decode); profiles measured before these columns fit the whole generation's peak.

A layer whose KV cache a plan sets (kv_specs: layer -> kernels.kvcache.KVSpec) attends over its
kept scales only, and pays the measured difference between the attention backend that reads such
a cache (`dense_kvfp` / `dense_kv8` / `dense_kv4`: the scales gathered, dequantized) and the plain
one (`dense`) at the same shape.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

log = logging.getLogger(__name__)

VERSION = 1
MB = 2 ** 20
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}

# kinds of the quantizable linears, as in the sensitivity table
LINEAR_KINDS = ("word_embed", "mat_qkv", "proj", "fc1", "fc2", "ada_lin", "head")
# how many rows a linear of each kind sees at scale si (B images, CFG-doubled to 2B):
#   token: every token of the scale, 2B rows; cond: one row per sequence (2B);
#   next:  word_embed embeds the next scale's tokens, B rows (before the CFG repeat).
ROWS = {"word_embed": "next", "mat_qkv": "token", "proj": "token", "fc1": "token",
        "fc2": "token", "ada_lin": "cond", "head": "token"}
FP32_ALWAYS = ("head", "head_nm.ada_lin.1")  # run under autocast(enabled=False) in get_logits
ATTN_BACKENDS = ("dense", "mdwa", "dense_qk8", "mdwa_qk8")
LINEAR_FEATURES = ("const", "MKN/1e9", "KN/1e6", "M(K+N)/1e6")
ATTN_FEATURES = ("const", "W*kept/1e9", "W/1e9", "BHD(q+kv)/1e6")
E2E_FEATURES = ("kernels", "const", "S*(depth+1)", "B*L*(C*depth+V)/1e6", "B*n_last/1e3")
ALPHA_BOUNDS = (0.5, 2.0)  # in-model vs isolated kernel time (caches, dispatch)
MEM_FEATURES = ("const", "activations_mb", "linear_workspace_mb")


# ---------------------------------------------------------------------------------------------
# Architecture


def arch_dims(arch: dict) -> dict:
    """Normalised dims of an arch dict (meta.model.arch): C, H, D, depth, hidden, V, Cvae, ..."""
    missing = [k for k in ("depth", "V", "Cvae") if k not in arch]
    if missing or not ("embed_dim" in arch or "C" in arch):
        raise ValueError(f"arch {arch} lacks {missing or ['embed_dim']}: pass meta.model.arch "
                         "(depth, embed_dim, num_heads, mlp_ratio, V, Cvae, num_classes, patch_nums)")
    C = int(arch.get("embed_dim", arch.get("C")))
    depth = int(arch["depth"])
    H = int(arch.get("num_heads", depth))
    return {"C": C, "H": H, "D": C // H, "depth": depth, "hidden": round(C * float(arch.get("mlp_ratio", 4.0))),
            "V": int(arch["V"]), "Cvae": int(arch["Cvae"]), "num_classes": int(arch.get("num_classes", 1000)),
            "shared_aln": bool(arch.get("shared_aln", False))}


def linear_layers(arch: dict) -> list[tuple[str, int, int, str]]:
    """(fqn, K, N, kind) of every quantizable linear of the VAR; ROWS[kind] says how it is called."""
    d = arch_dims(arch)
    C, hid = d["C"], d["hidden"]
    out = [("word_embed", d["Cvae"], C, "word_embed")]
    if d["shared_aln"]:
        out.append(("shared_ada_lin.1", C, 6 * C, "ada_lin"))
    for i in range(d["depth"]):
        p = f"blocks.{i}."
        out += [(p + "attn.mat_qkv", C, 3 * C, "mat_qkv"), (p + "attn.proj", C, C, "proj"),
                (p + "ffn.fc1", C, hid, "fc1"), (p + "ffn.fc2", hid, C, "fc2")]
        if not d["shared_aln"]:
            out.append((p + "ada_lin.1", C, 6 * C, "ada_lin"))
    out += [("head_nm.ada_lin.1", C, 2 * C, "ada_lin"), ("head", C, d["V"], "head")]
    return out


def rows_at_scale(kind: str, patch_nums, si: int, batch: int) -> int:
    """Rows (M) a linear of `kind` multiplies at scale si; 0 when it does not run there."""
    how = ROWS[kind]
    if how == "token":
        return 2 * batch * patch_nums[si] ** 2
    if how == "cond":
        return 2 * batch
    return batch * patch_nums[si + 1] ** 2 if si + 1 < len(patch_nums) else 0


def linear_calls(arch: dict, patch_nums, batch: int) -> list[tuple[str, int, int, int, str]]:
    """(fqn, K, N, M, kind) of every linear call of one generation."""
    return [(fqn, K, N, M, kind) for si in range(len(patch_nums)) for fqn, K, N, kind in linear_layers(arch)
            if (M := rows_at_scale(kind, patch_nums, si, batch)) > 0]


def attention_calls(arch: dict, patch_nums, batch: int) -> list[tuple[int, int, int, int]]:
    """(layer, scale, q_len, kv_len) of every attention call of one generation."""
    d, ends, total = arch_dims(arch), [], 0
    for pn in patch_nums:
        total += pn * pn
        ends.append(total)
    return [(layer, si, pn * pn, ends[si]) for si, pn in enumerate(patch_nums) for layer in range(d["depth"])]


# ---------------------------------------------------------------------------------------------
# Formats and bytes


def _fmt(fmt: str):
    from litevar.kernels.formats import get_format
    return get_format(fmt)


def weight_bytes(K: int, N: int, fmt: str, fp_bytes: int = 4) -> int:
    """Stored bytes of one linear's weight (bias excluded, it is float in every format).

    fp: K*N at the parameter dtype (fp_bytes; autocast does not change what is stored).
    Quantized (QuantLinear buffers): int8 codes (1 byte, also for 6-bit), INT4 packed two per
    byte, float32 scales (and zeros when asymmetric) per output channel and group, and the
    float32 per-channel weight sum. Emulated formats store the same codes and dequantize per
    call (that transient copy is memory workspace, see predict). BF16: K*N*2 (CastLinear)."""
    from litevar.kernels.formats import CAST_DTYPES
    f = _fmt(fmt)
    if f.casts:
        return K * N * DTYPE_BYTES[CAST_DTYPES[f.float_dtype]]
    if f.is_float:
        return K * N * fp_bytes
    codes = K * N // 2 if f.w_bits == 4 else K * N
    groups = K // getattr(f.w_granularity, "group_size", K)
    scales = N * groups * 4 * (1 if f.symmetric else 2)
    return codes + scales + N * 4


def other_param_bytes(arch: dict, patch_nums, fp_bytes: int = 4) -> int:
    """Bytes of the VAR's parameters and buffers outside the quantizable linear weights."""
    d = arch_dims(arch)
    C, S, L = d["C"], len(patch_nums), sum(p * p for p in patch_nums)
    n = (d["num_classes"] + 1) * C + patch_nums[0] ** 2 * C + L * C + S * C  # embeddings, pos
    per_block = 3 * C + d["H"] + C + d["hidden"] + C + (0 if d["shared_aln"] else 6 * C)
    n += d["depth"] * per_block + C + 2 * C + d["V"] + (6 * C if d["shared_aln"] else 0)  # biases
    return n * fp_bytes + L * 8  # + lvl_1L (int64)


def format_applies(K: int, fmt: str) -> bool:
    """Whether a linear with K input features can take `fmt` (INT4 packing needs an even K,
    group-wise scales a K divisible by the group size), as QuantLinear requires."""
    f = _fmt(fmt)
    if f.is_float:
        return True
    return (f.w_bits != 4 or K % 2 == 0) and K % getattr(f.w_granularity, "group_size", K) == 0


def is_emulated(cm: dict, fmt: str) -> bool:
    return cm["format_kernel"].get(fmt, "emulated") == "emulated"


def format_kernels(device: str) -> dict[str, str]:
    """format name -> kernel ('dense', 'w8a8', ..., 'emulated') on `device`."""
    from litevar.kernels.formats import FORMATS, capability
    return {name: capability(name, device).kernel for name in FORMATS}


# ---------------------------------------------------------------------------------------------
# Features and fitting


def linear_features(K, N, M) -> np.ndarray:
    K, N, M = (np.asarray(v, dtype=float) for v in (K, N, M))
    return np.stack([np.ones_like(M), M * K * N / 1e9, K * N / 1e6, M * (K + N) / 1e6], -1)


def attn_features(B, H, D, q_len, kv_len, kept) -> np.ndarray:
    B, H, D, q, kv, kept = (np.asarray(v, dtype=float) for v in (B, H, D, q_len, kv_len, kept))
    W = B * H * D * q * kv
    return np.stack([np.ones_like(W), W * kept / 1e9, W / 1e9, B * H * D * (q + kv) / 1e6], -1)


def e2e_features(arch: dict, patch_nums, batch: int) -> np.ndarray:
    """Overhead features (E2E_FEATURES without 'kernels') of one generation."""
    d = arch_dims(arch)
    S, L, n_last = len(patch_nums), sum(p * p for p in patch_nums), patch_nums[-1] ** 2
    return np.array([1.0, S * (d["depth"] + 1), batch * L * (d["C"] * d["depth"] + d["V"]) / 1e6,
                     batch * n_last / 1e3])


def memory_features(arch: dict, patch_nums, batch: int, act_bytes: int, kv_specs: dict | None = None
                    ) -> dict[str, float]:
    """MB of the KV cache (exact), the largest KV gather buffer (exact) and the activations of the
    last scale (fitted factor)."""
    from litevar.kernels.kvcache import KVSpec, cache_bytes, gather_bytes
    d = arch_dims(arch)
    n_last = patch_nums[-1] ** 2
    specs = [(kv_specs or {}).get(layer, KVSpec()) for layer in range(d["depth"])]
    return {"kv_mb": sum(cache_bytes(patch_nums, s, batch, d["H"], d["D"], act_bytes) for s in specs) / MB,
            "kv_gather_mb": max(gather_bytes(patch_nums, s, batch, d["H"], d["D"], act_bytes) for s in specs) / MB,
            "activations_mb": 2 * batch * n_last * (4 * d["C"] + d["hidden"] + d["V"]) * 4 / MB}


def image_pixels(arch: dict, patch_nums, batch: int) -> float:
    """Pixels the VQVAE decodes for `batch` images (arch['downsample']: pixels per latent side)."""
    return batch * (patch_nums[-1] * int(arch.get("downsample", 16))) ** 2


def nonneg_fit(A: np.ndarray, y: np.ndarray, relative: bool = True, lower=None, upper=None) -> tuple[list, float]:
    """Coefficients x >= lower (default 0) minimising |(A x - y) / y| (relative) or |A x - y|,
    and the RMS relative error of the fit."""
    from scipy.optimize import lsq_linear
    A, y = np.asarray(A, dtype=float), np.asarray(y, dtype=float)
    if len(y) == 0:
        raise ValueError("no measured points to fit: the cost table is empty")
    w = 1.0 / np.maximum(np.abs(y), 1e-9) if relative else np.ones_like(y)
    scale = np.maximum(np.abs(A * w[:, None]).max(0), 1e-30)  # column scaling for conditioning
    lo = np.zeros(A.shape[1]) if lower is None else np.asarray(lower, dtype=float)
    hi = np.full(A.shape[1], np.inf) if upper is None else np.asarray(upper, dtype=float)
    res = lsq_linear(A * w[:, None] / scale, y * w, bounds=(lo * scale, hi * scale), method="bvls")
    x = res.x / scale
    rel = (A @ x - y) / np.maximum(np.abs(y), 1e-9)
    return [float(v) for v in x], float(np.sqrt(np.mean(rel ** 2)))


def _backend_dtype(backend: str) -> str:
    """'w8a8-fp32' -> 'fp32' (cost_linear.backend is '<kernel>-<dtype>')."""
    return backend.rsplit("-", 1)[-1]


def fit_linear(df) -> dict:
    """{'<format>|<dtype>': {coef, rmse_rel, n}} from the cost_linear table."""
    out = {}
    df = df.assign(dtype=df["backend"].map(_backend_dtype))
    for (fmt, dtype), g in df.groupby(["format", "dtype"]):
        coef, err = nonneg_fit(linear_features(g["K"], g["N"], g["M"]), g["ms"].to_numpy())
        out[f"{fmt}|{dtype}"] = {"coef": coef, "rmse_rel": err, "n": len(g),
                                 "kernel": g["backend"].iloc[0].rsplit("-", 1)[0]}
    return out


def workspace_features(K, N, M) -> np.ndarray:
    K, N, M = (np.asarray(v, dtype=float) for v in (K, N, M))
    return np.stack([M * K, M * N, K * N], -1) * 4 / MB


def fit_linear_workspace(df) -> dict:
    """{format: [u, v, w]}: MB one linear call adds = (u * M*K + v * M*N + w * K*N) * 4 B
    (rows of cost_linear with a workspace_mb)."""
    if "workspace_mb" not in df:
        return {}
    df = df[df["workspace_mb"].notna()]
    out = {}
    for fmt, g in df.groupby("format"):
        A = workspace_features(g["K"], g["N"], g["M"])
        out[fmt], _ = nonneg_fit(A, g["workspace_mb"].to_numpy(dtype=float), relative=False)
    return out


def fit_attention(df) -> dict:
    """{backend: {coef, rmse_rel, n}} from the cost_attn table."""
    out = {}
    for backend, g in df.groupby("backend"):
        kept = g["kept"].where(~g["backend"].str.startswith("dense"), 1.0)
        coef, err = nonneg_fit(attn_features(g["B"], g["H"], g["D"], g["q_len"], g["kv_len"], kept),
                               g["ms"].to_numpy())
        out[backend] = {"coef": coef, "rmse_rel": err, "n": len(g)}
    return out


def _row_patch_nums(row) -> tuple[int, ...]:
    pn = row["patch_nums"]
    return tuple(int(p) for p in (pn.split(",") if isinstance(pn, str) else pn))


def fit(tables: dict, arch: dict, device: str = "cpu", dtype: str = "fp32", vae_mb: float = 0.0,
        fit_rows: Iterable[int] | None = None) -> dict:
    """JSON-able cost model from the cost tables (pandas DataFrames cost_linear, cost_attn,
    cost_e2e; cost_e2e needs a patch_nums column). `dtype` is the runtime compute dtype,
    `vae_mb` the VAE's resident bytes, `fit_rows` the cost_e2e rows (positions) to fit on
    (default all; the rest are for validation)."""
    cm = {"version": VERSION, "device": str(device), "dtype": dtype, "arch": dict(arch),
          "format_kernel": format_kernels(device), "features": {
              "linear": LINEAR_FEATURES, "attn": ATTN_FEATURES, "e2e": E2E_FEATURES, "memory": MEM_FEATURES},
          "linear": fit_linear(tables["cost_linear"]), "attn": fit_attention(tables["cost_attn"]),
          "linear_workspace": fit_linear_workspace(tables["cost_linear"])}
    e2e = tables["cost_e2e"]
    e2e = e2e.iloc[list(fit_rows)] if fit_rows is not None else e2e
    cm["e2e"], cm["memory"] = fit_e2e(cm, arch, e2e), fit_memory(cm, arch, e2e, vae_mb, tables.get("cost_decode"))
    log.info("cost model: linear %s, attention %s, e2e rmse %.1f%%, memory rmse %.1f%%",
             {k: round(v["rmse_rel"], 3) for k, v in cm["linear"].items()},
             {k: round(v["rmse_rel"], 3) for k, v in cm["attn"].items()},
             100 * cm["e2e"]["rmse_rel"], 100 * cm["memory"]["rmse_rel"])
    return cm


def fit_e2e(cm: dict, arch: dict, e2e) -> dict:
    """Per kernel family an alpha (kernel time factor, within ALPHA_BOUNDS) and the overhead
    coefficients. A quantized family gets its own alpha when a generation ran it (its
    in-model speed differs from the isolated one differently from dense kernels'); coef[0] is
    the dense alpha."""
    runs = [(_row_patch_nums(row), int(row["batch"]), row["config"], float(row["ms"])) for _, row in e2e.iterrows()]
    ks = [kernel_ms(cm, arch, pns, b, **config_spec(c, arch))["by_kernel"] for pns, b, c, _ in runs]
    quant = sorted({k for by in ks for k, v in by.items() if k != "dense" and v > 0})
    A = [np.concatenate([[by["dense"]], [by.get(q, 0.0) for q in quant], e2e_features(arch, pns, b)])
         for by, (pns, b, _, _) in zip(ks, runs)]
    y = [ms for *_, ms in runs]
    n_alpha, n = 1 + len(quant), len(E2E_FEATURES) - 1
    lower = np.r_[np.full(n_alpha, ALPHA_BOUNDS[0]), np.zeros(n)]
    upper = np.r_[np.full(n_alpha, ALPHA_BOUNDS[1]), np.full(n, np.inf)]
    coef, err = nonneg_fit(np.array(A), np.array(y), lower=lower, upper=upper)
    return {"coef": [coef[0], *coef[n_alpha:]], "alpha": dict(zip(["dense", *quant], coef[:n_alpha])),
            "rmse_rel": err, "n": len(y)}


def fit_memory(cm: dict, arch: dict, e2e, vae_mb: float = 0.0, decodes=None) -> dict:
    """The fitted terms of the memory model (see the module docstring): m0, m1, m2 >= 0 on the
    transformer phase's peak minus its counted parts (m2 scales the isolated quantized-linear
    workspace; it stays 1 without quantized generations to fit on); d0, d1 >= 0 on the decodes'
    peaks minus the resident weights. Without the phase columns (profiles measured before them)
    m0..m2 are fitted on the whole generation's peak and the decode phase is not modelled."""
    phases = "peak_tf_mb" in e2e and e2e["peak_tf_mb"].notna().all()
    A, y, act_bytes = [], [], DTYPE_BYTES[cm["dtype"]]
    for _, row in e2e.iterrows():
        pns, batch = _row_patch_nums(row), int(row["batch"])
        spec = config_spec(row["config"], arch)
        counted = counted_memory_mb(cm, arch, pns, batch, spec["formats"], vae_mb, kv_specs=spec["kv_specs"])
        f = memory_features(arch, pns, batch, act_bytes)
        A.append([1.0, f["activations_mb"], counted.pop("linear_workspace_mb"), counted.pop("kv_gather_mb")])
        y.append(float(row["peak_tf_mb" if phases else "peak_mb"]) - sum(counted.values()))
    A, y = np.array(A), np.array(y)
    coef, _ = nonneg_fit(A, y, relative=False)
    for j in (2, 3):  # no quantized linear / KV generation to fit on: count the isolated figure as is
        if not A[:, j].any():
            coef[j] = 1.0
    target = e2e["peak_tf_mb" if phases else "peak_mb"].to_numpy(dtype=float)
    out = {"coef": coef[:3], "gather_coef": coef[3],
           "rmse_rel": float(np.sqrt(np.mean(((A @ coef - y) / target) ** 2))), "n": len(y), "vae_mb": float(vae_mb)}
    if phases and "peak_decode_mb" in e2e:
        out["decode"] = fit_decode(cm, arch, e2e, vae_mb, decodes)
    return out


def fit_decode(cm: dict, arch: dict, e2e, vae_mb: float, decodes=None) -> dict:
    """The decode phase's own peak (MB above the resident weights) against the pixels decoded:
    piecewise linear through the measured points (MB/1e6 px), extended past the largest along its
    last segment. Points: each generation's decode phase (peak_decode_mb - weights - other
    parameters - VAE) and the decodes alone (cost_decode). Not an affine fit: the decoder's peak
    is that of its lower levels at small images and of its full-resolution level (a fixed number
    of feature maps) only from ~512 px on, so a line through 256 and 512 px overshoots 2048 px by
    half; the last segment is the one that holds there."""
    pts: dict[float, list[float]] = {}
    for _, row in e2e.iterrows():
        pns, batch = _row_patch_nums(row), int(row["batch"])
        resident = _resident_mb(cm, arch, pns, config_spec(row["config"], arch)["formats"], vae_mb)
        pts.setdefault(image_pixels(arch, pns, batch) / 1e6, []).append(float(row["peak_decode_mb"]) - resident)
    for _, row in (decodes.iterrows() if decodes is not None else ()):
        pts.setdefault(int(row["batch"]) * int(row["resolution"]) ** 2 / 1e6, []).append(float(row["peak_mb"]))
    points = [[x, max(float(np.median(v)), 0.0)] for x, v in sorted(pts.items())]
    return {"points": points, "features": ["pixels/1e6", "MB"], "n": sum(map(len, pts.values()))}


def decode_alloc_mb(dec: dict, pixels_m: float) -> float:
    """MB the decode of `pixels_m` million pixels allocates: fit_decode's points (or d0 + d1 * px
    of profiles fitted before them)."""
    if "coef" in dec:
        return dec["coef"][0] + dec["coef"][1] * pixels_m
    x, y = np.array(dec["points"]).T
    if len(x) == 1:
        return float(y[0] * pixels_m / x[0])  # one point: proportional to the pixels
    if pixels_m <= x[-1]:
        return float(np.interp(pixels_m, x, y))
    slope = max((y[-1] - y[-2]) / (x[-1] - x[-2]), 0.0)
    return float(y[-1] + slope * (pixels_m - x[-1]))


def _resident_mb(cm: dict, arch: dict, patch_nums, formats: dict, vae_mb: float) -> float:
    lin = [(K, N, formats.get(fqn, "fp")) for fqn, K, N, _ in linear_layers(arch)]
    return (sum(weight_bytes(K, N, f) for K, N, f in lin) + other_param_bytes(arch, patch_nums)) / MB + vae_mb


# ---------------------------------------------------------------------------------------------
# Prediction


def _linear_entry(cm: dict, fmt: str, dtype: str) -> dict | None:
    lin = cm["linear"]
    for key in (f"{fmt}|{dtype}", f"{fmt}|{cm['dtype']}"):
        if key in lin:
            return lin[key]
    if is_emulated(cm, fmt):  # any measured emulated format stands for the others
        same = [v for k, v in lin.items() if v.get("kernel") == "emulated"]
        return same[0] if same else None
    return None


def linear_ms(cm: dict, K: int, N: int, M: int, fmt: str, dtype: str | None = None) -> float:
    """Predicted ms of one linear call (M rows, K in, N out) in format `fmt` at `dtype`
    (default: the runtime dtype of the profile). Emulated formats are never faster than fp."""
    dtype = dtype or cm["dtype"]
    fp = _linear_entry(cm, "fp", dtype)
    if fp is None:
        raise KeyError(f"the cost model has no fp linear timings at {dtype}; re-run the cost stage")
    fp_ms = float(linear_features(K, N, M) @ np.array(fp["coef"]))
    if fmt == "fp":
        return fp_ms
    if fmt not in cm["format_kernel"]:  # not emulated: unknown to the profile, which predates it
        raise KeyError(f"format {fmt!r} is newer than this profile's cost stage, which neither timed it nor "
                       f"recorded its kernel; re-run the cost stage (`litevar profile`) to plan with it")
    entry = _linear_entry(cm, fmt, dtype)
    if entry is None:
        if not is_emulated(cm, fmt):
            raise KeyError(f"format {fmt!r} was not timed on this device; re-run the cost stage with it "
                           f"(timed: {sorted(cm['linear'])})")
        return fp_ms
    ms = float(linear_features(K, N, M) @ np.array(entry["coef"]))
    return max(ms, fp_ms) if is_emulated(cm, fmt) else ms


def attn_ms(cm: dict, B: int, H: int, D: int, q_len: int, kv_len: int, kept: float, backend: str) -> float:
    """Predicted ms of one attention call (B rows incl. CFG doubling) on `backend`
    ('dense', 'mdwa', or either with '_qk8'); an untimed '_qk8' backend falls back to its base."""
    entries = cm["attn"]
    name = backend if backend in entries else backend.removesuffix("_qk8")
    if name not in entries:
        raise KeyError(f"attention backend {backend!r} was not timed; timed: {sorted(entries)}")
    kept = 1.0 if name.startswith("dense") else kept
    return float(attn_features(B, H, D, q_len, kv_len, kept) @ np.array(entries[name]["coef"]))


def config_spec(config: str, arch: dict) -> dict:
    """The predict() arguments of an e2e config name: 'dense' (everything fp, dense attention)
    or '<FORMAT>:<kind>,<kind>[;<FORMAT>:<kind>...]' (those linear kinds in FORMAT where the
    format applies to their input width, e.g. 'W8A8:fc1,fc2;W4A16:head'); a group
    '<KV format>:<keep rule>' ('KV8:all', 'KV4:s1r2', 'fp:s3r1') sets every block's KV cache."""
    formats, kv_specs = {}, {}
    for group in ([] if config == "dense" else config.split(";")):
        fmt, _, kinds = group.partition(":")
        if fmt in KV_BACKENDS:
            kv_specs = {layer: kv_spec_of(fmt, kinds, config) for layer in range(arch_dims(arch)["depth"])}
            continue
        wanted = set(kinds.split(",")) if kinds else set()
        bad = wanted - set(LINEAR_KINDS)
        if not fmt or not wanted or bad:
            raise ValueError(f"e2e config {config!r}: use 'dense' or '<FORMAT>:<kind>,...[;...]', e.g. "
                             f"'W8A8:fc1,fc2', with kinds from {', '.join(LINEAR_KINDS)}")
        formats.update({fqn: fmt for fqn, K, _, kind in linear_layers(arch)  # kinds whose K suits fmt
                        if kind in wanted and format_applies(K, fmt)})
    return {"formats": formats, "kept": {}, "cfg_shared": set(), "qk_int8": set(), "kv_specs": kv_specs}


def kv_spec_of(fmt: str, keep: str, config: str = ""):
    """litevar.kernels.kvcache.KVSpec of a KV group of an e2e config: keep 'all' or 's<sinks>r<recent>'."""
    import re

    from litevar.kernels.kvcache import KeepRule, KVSpec
    m = re.fullmatch(r"s(\d+)r(\d+)", keep)
    if keep != "all" and not m:
        raise ValueError(f"e2e config {config!r}: KV keep rule {keep!r}; use 'all' or 's<sinks>r<recent>', e.g. s1r2")
    return KVSpec(fmt, KeepRule(int(m[1]), int(m[2])) if m else KeepRule())


def kernel_ms(cm: dict, arch: dict, patch_nums, batch: int, formats: dict, kept: dict, cfg_shared,
              qk_int8, dtype: str | None = None, kv_specs: dict | None = None) -> dict:
    """Sum of predicted linear and attention ms of one generation, with per-layer totals and
    per-kernel totals (by_kernel: 'dense' = fp linears + attention, else the quantized kernel).
    A layer in kv_specs attends over its kept scales and pays its cache's gather (kv_call_ms)."""
    dtype, d = dtype or cm["dtype"], arch_dims(arch)
    per_layer: dict[str, float] = {}
    by_kernel: dict[str, float] = {"dense": 0.0}
    for fqn, K, N, M, _ in linear_calls(arch, patch_nums, batch):
        dt = "fp32" if fqn in FP32_ALWAYS else dtype
        fmt = formats.get(fqn, "fp")
        ms = linear_ms(cm, K, N, M, fmt, dt)
        per_layer[fqn] = per_layer.get(fqn, 0.0) + ms
        kern = kernel_of(cm, fmt)
        by_kernel[kern] = by_kernel.get(kern, 0.0) + ms
    attn, kv_specs = 0.0, kv_specs or {}
    for layer, si, q, kv in attention_calls(arch, patch_nums, batch):
        k = float(kept.get((layer, si), 1.0))
        backend = ("mdwa" if k < 1.0 else "dense") + ("_qk8" if layer in qk_int8 else "")
        rows = batch if layer in cfg_shared else 2 * batch
        ms = attn_ms(cm, rows, d["H"], d["D"], q, kv, k, backend)
        if layer in kv_specs:
            ms = kv_call_ms(cm, arch, patch_nums, si, rows, kv_specs[layer], ms)
        per_layer[f"blocks.{layer}.attn.qk"] = per_layer.get(f"blocks.{layer}.attn.qk", 0.0) + ms
        attn += ms
    by_kernel["dense"] += attn
    return {"linear_ms": sum(v for k, v in per_layer.items() if not k.endswith(".qk")),
            "attn_ms": attn, "per_layer": per_layer, "by_kernel": by_kernel}


KV_BACKENDS = {"fp": "dense_kvfp", "KV8": "dense_kv8", "KV4": "dense_kv4"}


def kv_call_ms(cm: dict, arch: dict, patch_nums, si: int, rows: int, spec, plain_ms: float) -> float:
    """ms of attention call `si` of a layer with KV-cache decisions `spec`, from `plain_ms` (the
    call over every key of a plain cache): over its kept scales only (kv_len scaled by the keys
    kept), plus what the backend reading such a cache costs beyond the plain one at that shape."""
    if spec.plain:
        return plain_ms
    d = arch_dims(arch)
    q = patch_nums[si] ** 2
    kv = sum(p * p for p in patch_nums[:si + 1])
    kv_kept = sum(patch_nums[j] ** 2 for j in spec.keep.parts(si))
    if not spec.fmt.quantized and spec.keep.keeps_all:  # preallocated half cache: no gather
        return plain_ms
    base = plain_ms * attn_ms(cm, rows, d["H"], d["D"], q, kv_kept, 1.0, "dense") / attn_ms(
        cm, rows, d["H"], d["D"], q, kv, 1.0, "dense")
    extra = (attn_ms(cm, rows, d["H"], d["D"], q, kv_kept, 1.0, KV_BACKENDS[spec.fmt.name])
             - attn_ms(cm, rows, d["H"], d["D"], q, kv_kept, 1.0, "dense"))
    return base + max(0.0, extra)


def kernel_of(cm: dict, fmt: str) -> str:
    """The kernel family whose in-model factor (alpha) applies to a linear in `fmt`."""
    return "dense" if fmt == "fp" else cm["format_kernel"].get(fmt, "emulated")


def alpha_of(cm: dict, kernel: str) -> float:
    """In-model vs isolated time factor of a kernel family: fitted on the generations that ran
    it, else the dense one."""
    e = cm["e2e"]
    return float(e.get("alpha", {}).get(kernel, e["coef"][0]))


def linear_workspace_mb(cm: dict, K: int, N: int, M: int, fmt: str) -> float:
    """MB a quantized linear call adds beyond the fp one (its temporaries: quantized
    activations, int32 accumulators, dequantized weights); 0 when not measured."""
    ws = cm.get("linear_workspace", {})
    if fmt not in ws and is_emulated(cm, fmt):
        fmt = next((f for f in ws if is_emulated(cm, f)), fmt)
    if fmt not in ws or "fp" not in ws:
        return 0.0
    f = workspace_features(K, N, M)
    return max(0.0, float(f @ np.array(ws[fmt]) - f @ np.array(ws["fp"])))


def counted_memory_mb(cm: dict, arch: dict, patch_nums, batch: int, formats: dict, vae_mb: float,
                      dtype: str | None = None, kv_specs: dict | None = None) -> dict:
    """The parts of the transformer phase's peak not fitted on generations (MB): weights by
    format, other VAR parameters, VAE, KV cache, the largest extra workspace of a quantized linear
    and the largest buffer a KV call gathers."""
    fp_bytes = 4  # parameters stay float32 under autocast
    lin = [(K, N, kind, formats.get(fqn, "fp")) for fqn, K, N, kind in linear_layers(arch)]
    last = len(patch_nums) - 1

    def rows(kind):  # the largest call: the last scale's tokens (word_embed: one scale earlier)
        return max(rows_at_scale(kind, patch_nums, si, batch) for si in (last - 1, last))

    extra = [linear_workspace_mb(cm, K, N, rows(kind), f) for K, N, kind, f in lin if f != "fp"]
    kv = memory_features(arch, patch_nums, batch, DTYPE_BYTES[dtype or cm["dtype"]], kv_specs)
    return {"weights_mb": sum(weight_bytes(K, N, f, fp_bytes) for K, N, _, f in lin) / MB,
            "other_params_mb": other_param_bytes(arch, patch_nums, fp_bytes) / MB,
            "vae_mb": float(vae_mb), "kv_mb": kv["kv_mb"], "kv_gather_mb": kv["kv_gather_mb"],
            "linear_workspace_mb": max(extra, default=0.0)}


def predict(cm: dict, arch: dict, patch_nums, batch: int, formats: dict[str, str] | None = None,
            kept: dict[tuple[int, int], float] | None = None, cfg_shared: set[int] | None = None,
            qk_int8: set[int] | None = None, dtype: str | None = None, kv_specs: dict | None = None) -> dict:
    """Predicted latency_ms and memory_mb of one generation of `batch` images at `patch_nums`.

    formats: fqn -> format name (missing: fp); kept: (layer, scale) -> kept fraction of the
    attention pairs (missing: 1, dense); cfg_shared / qk_int8: layers with ASC / QK8; kv_specs:
    layer -> kernels.kvcache.KVSpec (missing: the plain cache, or the conditional half of it in a
    CFG-shared layer, as Plan.kv_spec gives). breakdown.memory_mb holds both phases' parts."""
    formats, kept = formats or {}, kept or {}
    cfg_shared, qk_int8 = set(cfg_shared or ()), set(qk_int8 or ())
    pns = tuple(int(p) for p in patch_nums)
    kv_specs = with_cfg_halves(kv_specs, cfg_shared)
    k = kernel_ms(cm, arch, pns, batch, formats, kept, cfg_shared, qk_int8, dtype, kv_specs)
    e = np.array(cm["e2e"]["coef"])
    overhead = float(e2e_features(arch, pns, batch) @ e[1:])
    latency = sum(alpha_of(cm, kern) * ms for kern, ms in k["by_kernel"].items()) + overhead
    mem = counted_memory_mb(cm, arch, pns, batch, formats, cm["memory"]["vae_mb"], dtype, kv_specs)
    act_mb = memory_features(arch, pns, batch, DTYPE_BYTES[dtype or cm["dtype"]])["activations_mb"]
    m0, m1, m2 = cm["memory"]["coef"]
    ws, gather = m2 * mem.pop("linear_workspace_mb"), gather_coef(cm) * mem.pop("kv_gather_mb")
    mem.update(fixed_mb=m0, activations_mb=m1 * act_mb, workspace_mb=max(ws, gather))
    transformer = float(sum(mem.values()))
    decode = decode_mb(cm, arch, pns, batch, mem["weights_mb"] + mem["other_params_mb"] + mem["vae_mb"])
    alpha = float(e[0])
    per_layer = {n: v * (alpha if n.endswith(".qk") else alpha_of(cm, kernel_of(cm, formats.get(n, "fp"))))
                 for n, v in k["per_layer"].items()}
    return {"latency_ms": float(latency), "memory_mb": max(transformer, decode),
            "breakdown": {"linear_ms": sum(v for n, v in per_layer.items() if not n.endswith(".qk")),
                          "attn_ms": alpha * k["attn_ms"], "overhead_ms": overhead, "alpha": alpha,
                          "per_layer_ms": per_layer, "memory_mb": mem, "transformer_mb": transformer,
                          "decode_mb": decode}}


def gather_coef(cm: dict) -> float:
    """The share of a KV call's gathered keys that adds to the transformer phase's peak (fitted
    on KV-cache generations: the buffer lives during attention, when the FFN's and the head's
    activations are not; 1 when the profile has no such generation to fit on)."""
    return float(cm["memory"].get("gather_coef", 1.0))


def with_cfg_halves(kv_specs: dict | None, cfg_shared: set[int]) -> dict:
    """kv_specs with an fp keep-all spec for each CFG-shared layer it leaves out (the runtime
    stores such a layer's conditional half only)."""
    from litevar.kernels.kvcache import KVSpec
    out = dict(kv_specs or {})
    for layer in cfg_shared:
        out.setdefault(layer, KVSpec(cfg_shared=True))
    return out


def decode_mb(cm: dict, arch: dict, patch_nums, batch: int, resident_mb: float) -> float:
    """Peak MB of the decode phase (the resident weights plus the VQVAE decode); 0 for a profile
    that did not measure it."""
    dec = cm["memory"].get("decode")
    if not dec:
        return 0.0
    return resident_mb + decode_alloc_mb(dec, image_pixels(arch, patch_nums, batch) / 1e6)


def dense_pairs(validation: list[dict]) -> list[tuple[dict, dict]]:
    """(row, dense row) of validation rows: every quantized generation with the dense one timed
    at the same schedule and batch (those without one are left out)."""
    dense = {(v["patch_nums"], v["batch"]): v for v in validation if v["config"] == "dense"}
    return [(v, dense[(v["patch_nums"], v["batch"])]) for v in validation
            if v["config"] != "dense" and (v["patch_nums"], v["batch"]) in dense]


def validate(cm: dict, arch: dict, rows) -> list[dict]:
    """Predicted vs measured latency and memory of e2e rows (dicts or a DataFrame with
    patch_nums, batch, config, ms, peak_mb; optional resolution, held_out)."""
    rows = rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)
    out = []
    for row in rows:
        pns, batch = _row_patch_nums(row), int(row["batch"])
        p = predict(cm, arch, pns, batch, **config_spec(row["config"], arch))
        out.append({"resolution": int(row.get("resolution", pns[-1])), "patch_nums": ",".join(map(str, pns)),
                    "batch": batch, "config": row["config"], "held_out": bool(row.get("held_out", True)),
                    "measured_ms": float(row["ms"]), "predicted_ms": p["latency_ms"],
                    "latency_err": p["latency_ms"] / float(row["ms"]) - 1,
                    "measured_mb": float(row["peak_mb"]), "predicted_mb": p["memory_mb"],
                    "memory_err": p["memory_mb"] / float(row["peak_mb"]) - 1})
    return out
