// CUDA kernels for the three rcompile number formats: DFP, MiniFloat and Pow2.
//
// The NumPy reference quantizers in rcompile/formats/ are the definition; these kernels
// repeat them operation for operation in float32, so that they agree bit for bit on every
// input. That holds only when the source is compiled without fast math, without
// flush-to-zero and without FMA contraction (see rcompile/cuda_ops/compile.py), and it rests
// on these operations being exact or correctly rounded in IEEE float32: * + - and / (RN),
// rintf (half to even), floorf, comparisons, and powers of two and exponents built from the
// bits (never from log2 or exp2, which may be off by one ulp).
//
// Every kernel takes float32 input and output arrays of n elements (C order: element i is
// the reference's flat index i, which keys the stochastic rounding), walks them with a
// grid-stride loop, and takes `rounding` (a mode code, see round_value) and a 64-bit `seed`.
//
// The source uses nothing beyond the CUDA built-ins named here, so a small shim can compile
// it as host C++ to check its logic on a machine without a GPU (tests/test_cuda_kernels.py).

typedef unsigned long long u64;

#define GOLDEN_GAMMA 0x9E3779B97F4A7C15ull
#define SPLITMIX_MIX1 0xBF58476D1CE4E5B9ull
#define SPLITMIX_MIX2 0x94D049BB133111EBull

// float32(sqrt(2)) = 0x1.6a09e6p+0 lies just below sqrt(2): `m > SQRT2_F32` is `m > sqrt(2)`.
#define SQRT2_F32 0x1.6a09e6p+0f
// 2**-24, the step of the uniform numbers.
#define UNIFORM_STEP 0x1p-24f

__device__ __forceinline__ bool is_nan(float v) {
    return (__float_as_uint(v) & 0x7fffffffu) > 0x7f800000u;
}

__device__ __forceinline__ bool is_inf(float v) {
    return (__float_as_uint(v) & 0x7fffffffu) == 0x7f800000u;
}

// exact.pow2: 2**k as float32, exact for integer k in [-149, 127].
__device__ __forceinline__ float pow2i(int k) {
    return k >= -126 ? __uint_as_float((unsigned)(k + 127) << 23)
                     : __uint_as_float(1u << (k + 149));
}

// exact.floor_log2: frexp's exponent minus one, for positive finite a (subnormals too).
__device__ __forceinline__ int floor_log2(float a) {
    const unsigned bits = __float_as_uint(a);
    const int field = (int)(bits >> 23);
    // A subnormal is m * 2**-149 with m in [1, 2**23): floor(log2 m) = 31 - clz(m).
    return field != 0 ? field - 127 : -118 - __clz((int)bits);
}

// np.clip(v, lo, hi) for lo <= hi: NaN propagates, as in NumPy.
__device__ __forceinline__ float clip(float v, float lo, float hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}

// rounding.uniform: SplitMix64 finaliser of seed * gamma + index + gamma; top 24 bits.
__device__ __forceinline__ float uniform(u64 seed, u64 index) {
    u64 z = seed * GOLDEN_GAMMA + index;
    z += GOLDEN_GAMMA;
    z = (z ^ (z >> 30)) * SPLITMIX_MIX1;
    z = (z ^ (z >> 27)) * SPLITMIX_MIX2;
    z ^= z >> 31;
    return (float)(unsigned)(z >> 40) * UNIFORM_STEP;
}

// floor(y) + (y - floor(y) >= 1/2) with the sign of y: rounding._half_up for finite y.
__device__ __forceinline__ float half_up(float y) {
    const float down = floorf(y);
    return copysignf(down + (y - down >= 0.5f ? 1.0f : 0.0f), y);
}

// rounding.round_values for element `index`, by `rounding`: 0 rint (half to even),
// 1 stochastic copysign(floor(y) + (u < y - floor(y)), y), 2 half away from zero, 3 half up,
// 4 floor; inf and NaN unchanged.
__device__ __forceinline__ float round_value(float y, int rounding, u64 seed, u64 index) {
    if (rounding == 0) {
        return rintf(y);
    }
    if (rounding == 4) {
        return floorf(y);
    }
    if (is_nan(y) || is_inf(y)) {
        return y;
    }
    if (rounding == 3) {
        return half_up(y);
    }
    if (rounding == 2) {
        return copysignf(half_up(fabsf(y)), y);
    }
    const float down = floorf(y);
    const float fraction = y - down;
    // The sign of y, as rint keeps it: a negative value that rounds to zero gives -0.
    return copysignf(down + (uniform(seed, index) < fraction ? 1.0f : 0.0f), y);
}

// DFP.quantize: clip(round(x * 2**fl), code_min, code_max) * 2**-fl + 0.0.
// fl lies in [bw - 128, 126] (validated by DFP), so both powers of two are normal.
extern "C" __global__ void quantize_dfp(const float* __restrict__ x, float* __restrict__ y,
                                        u64 n, int bw, int fl, int is_signed, int rounding,
                                        u64 seed) {
    const float scale = pow2i(fl);
    const float step = pow2i(-fl);
    // float(code) rounds to nearest, as F32(code) does in NumPy (inexact above 24 bits).
    const float code_min = is_signed ? (float)(-(1ll << (bw - 1))) : 0.0f;
    const float code_max = is_signed ? (float)((1ll << (bw - 1)) - 1) : (float)((1ll << bw) - 1);
    const u64 stride = (u64)blockDim.x * gridDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float code = round_value(x[i] * scale, rounding, seed, i);
        code = clip(code, code_min, code_max);
        y[i] = code * step + 0.0f;  // + 0.0 makes zero +0 (integers have no -0)
    }
}

// MiniFloat.quantize. max_value is float32(fmt.max) (exact), emin the exponent of the
// smallest normal, flush_subnormals is `not has_subnormals`, keep_inf is `has_inf`.
extern "C" __global__ void quantize_minifloat(const float* __restrict__ x,
                                              float* __restrict__ y, u64 n, float max_value,
                                              int emin, int mant_bits, int flush_subnormals,
                                              int keep_inf, int rounding, u64 seed) {
    const float smallest_normal = pow2i(emin);
    const u64 stride = (u64)blockDim.x * gridDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float v = x[i];
        if (is_nan(v)) {
            y[i] = v;  // the input NaN, payload and sign included
            continue;
        }
        const float clamped = clip(v, -max_value, max_value);
        const float magnitude = fabsf(clamped);
        const int exponent =
            floor_log2(magnitude > smallest_normal ? magnitude : smallest_normal);
        const float quantum = pow2i(exponent - mant_bits);
        float result = round_value(clamped / quantum, rounding, seed, i) * quantum;
        if (flush_subnormals && magnitude < smallest_normal) {
            result = clamped * 0.0f;  // signed zero
        }
        if (keep_inf && is_inf(v)) {
            result = v;
        }
        y[i] = result;
    }
}

// Pow2.quantize: sign * 2**clip(e, exp_min, exp_max), e = round(log2|x|) in the log domain
// (mantissa against sqrt(2)), or stochastically from floor(log2|x|). With `zero`, e < exp_min
// gives the zero code, +0. The sign is that of x < 0.
extern "C" __global__ void quantize_pow2(const float* __restrict__ x, float* __restrict__ y,
                                         u64 n, int exp_min, int exp_max, int zero,
                                         int rounding, u64 seed) {
    const float lowest = pow2i(exp_min - 1);
    const float highest = pow2i(exp_max + 1);
    const u64 stride = (u64)blockDim.x * gridDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float v = x[i];
        if (is_nan(v)) {
            y[i] = v;
            continue;
        }
        const float magnitude = clip(fabsf(v), lowest, highest);
        const int floor_exp = floor_log2(magnitude);
        const float mantissa = magnitude / pow2i(floor_exp);
        int exponent;
        if (rounding == 1) {
            exponent = floor_exp + (int)round_value(mantissa - 1.0f, 1, seed, i);
        } else {
            exponent = floor_exp + (mantissa > SQRT2_F32 ? 1 : 0);
        }
        const int clipped = exponent < exp_min ? exp_min : (exponent > exp_max ? exp_max : exponent);
        const float power = (zero && exponent < exp_min) ? 0.0f : pow2i(clipped);
        y[i] = (v < 0.0f ? -1.0f : 1.0f) * power + 0.0f;  // + 0.0: the zero code is +0
    }
}
