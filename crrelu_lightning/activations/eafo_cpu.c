/* EAFO closed-form kernels for float32 on the CPU (docs/eafo_general.md §2, "Native CPU kernel").
 *
 *     forward:   y  = f(x) + eps*h(x)
 *     backward:  dx = dy*(f'(x) + eps*h'(x)),   d_eps = sum(dy*h(x))
 *
 *     h(x) = (x - A)^POWER * exp(C*(x - M)^2) * P(t),  t = ALPHA*x + BETA,  0 outside (A, B)
 *
 * Built by eafo_native.py once per closed form, with the form as -D constants (BASE, POWER, DEGREE, SHARED,
 * A, B, ALPHA, BETA, M, C, COEFS; HALF_ERFC_Q from cr_math), so every number is an immediate of the vector code and the Horner loops
 * unroll. Plain C loops that GCC/Clang vectorise (#pragma omp simd); exp is ours (Cody-Waite reduction, a
 * degree-6 polynomial, the exponent written into the bits), because libm's does not vectorise. Threads: one
 * OpenMP region over fixed chunks; d_eps is summed per chunk, then over chunks in order, so it is the same
 * bits for any thread count.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define RELU 0
#define GELU 1
#define SILU 2
#define MISH 3
#define CHUNK 8192

static const float coefs[DEGREE + 1] = COEFS;

/* erfc(z) = t*exp(-z^2)*Q(t), t = 1/(1 + z/2): HALF_ERFC_Q is cr_math._ERFC_Q / 2 (degree 7, rel. error 3e-6). */
static const float half_erfc_q[8] = HALF_ERFC_Q;

/* e^v for v in [-87, 88]: Cody-Waite reduction, degree-6 polynomial, 2^n shifted into the exponent bits. */
static inline __attribute__((always_inline)) float exp_core(float v) {
    /* round to nearest by the 1.5*2^23 trick (floorf/rintf calls would stop the loop from vectorising); the
     * magic number carries the exponent bias 127, so k's low mantissa bits are already 127 + n */
    float k = v * 1.44269504088896341f + 12583039.0f; /* 1.5*2^23 + 127 */
    float n = k - 12583039.0f;
    float r = v - n * 0.693145751953125f; /* ln 2 in two parts: r exact to float precision */
    r = r - n * 1.428606765330187045e-06f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    uint32_t bits;
    memcpy(&bits, &k, sizeof bits);
    bits <<= 23; /* 2^n: 127 + n in [1, 254] for v in [-87, 88] */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* e^x for any x: 0 below e^-87 (never a slow denormal), +inf above e^88, as torch's exp would say. */
static inline __attribute__((always_inline)) float exp_f(float x) {
    float e = exp_core(x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x));
    e = x < -87.0f ? 0.0f : e;
    return x > 88.0f ? __builtin_inff() : e;
}

/* e^x for x <= 0 (Gaussians): four vector operations fewer than exp_f. */
static inline __attribute__((always_inline)) float exp_nonpos(float x) {
    float e = exp_core(x < -87.0f ? -87.0f : x);
    return x < -87.0f ? 0.0f : e;
}

typedef struct { float f, df; } fdf;

/* f(x) and f'(x); g = exp(-x^2/2) is handed in for GELU (shared with the envelope where SHARED). */
static inline __attribute__((always_inline)) fdf base_f(float x, float g) {
#if BASE == RELU
    (void)g;
    return (fdf){x < 0.0f ? 0.0f : x, x > 0.0f ? 1.0f : 0.0f}; /* NaN stays NaN, as torch.relu */
#elif BASE == GELU
    float ax = __builtin_fabsf(x);
    float t = 1.0f / (1.0f + 0.35355339059327373f * ax);
    float q = half_erfc_q[7];
#pragma GCC unroll 8
    for (int j = 6; j >= 0; --j) q = q * t + half_erfc_q[j];
    float half = t * q * g; /* Phi(-|x|) */
    float cdf = x < 0.0f ? half : 1.0f - half;
    return (fdf){x * cdf, cdf + x * g * 0.3989422804014327f};
#elif BASE == SILU
    (void)g;
    float s = 1.0f / (1.0f + exp_f(-x));
    return (fdf){x * s, s * (1.0f + x * (1.0f - s))};
#elif BASE == MISH
    (void)g;
    float w = exp_f(x < 20.0f ? x : 20.0f); /* tanh(softplus(x)) = w(w + 2)/(w(w + 2) + 2), w = e^x */
    float num = w * (w + 2.0f);
    float th = num / (num + 2.0f);
    float s = w / (1.0f + w);
    return (fdf){x * th, th + x * (1.0f - th * th) * s};
#endif
}

/* exp(-x^2/2): GELU's, and the envelope where it is the standard one (SHARED) */
static inline __attribute__((always_inline)) float gauss(float x) {
#if BASE == GELU || SHARED
    return exp_nonpos(-0.5f * x * x);
#else
    (void)x;
    return 0.0f;
#endif
}

static inline __attribute__((always_inline)) float envelope(float x, float g) {
#if SHARED
    (void)x;
    return g;
#else
    (void)g;
    float d = x - (M);
    return exp_nonpos((C) * d * d); /* C < 0 */
#endif
}

static inline __attribute__((always_inline)) float upow(float u) {
#if POWER == 1
    return u;
#elif POWER == 2
    return u * u;
#else
    return (u * u) * (u * u);
#endif
}

static inline __attribute__((always_inline)) float upow_minus1(float u) {
#if POWER == 1
    (void)u;
    return 1.0f;
#elif POWER == 2
    return u;
#else
    return u * u * u;
#endif
}

static inline __attribute__((always_inline)) int workers(int64_t n, int threads) {
    int64_t chunks = (n + CHUNK - 1) / CHUNK;
    return threads < 1 ? 1 : (chunks < threads ? (int)(chunks > 0 ? chunks : 1) : threads);
}

void eafo_forward(const float *restrict x, float *restrict y, int64_t n, const float *eps_at, int threads) {
    const float eps = *eps_at; /* read here: no Python float conversion of the parameter per call */
    int64_t chunks = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static) num_threads(workers(n, threads))
    for (int64_t c = 0; c < chunks; ++c) {
        int64_t lo = c * CHUNK, hi = lo + CHUNK < n ? lo + CHUNK : n;
#pragma omp simd
        for (int64_t i = lo; i < hi; ++i) {
            float xi = x[i];
            float g = gauss(xi);
            fdf b = base_f(xi, g);
            float t = xi * (ALPHA) + (BETA);
            float p = coefs[DEGREE];
#pragma GCC unroll 32
            for (int j = DEGREE - 1; j >= 0; --j) p = p * t + coefs[j];
            float h = upow(xi - (A)) * envelope(xi, g) * p; /* computed for every lane, then selected */
            y[i] = b.f + eps * ((xi > (A)) & (xi < (B)) ? h : 0.0f);
        }
    }
}

/* Writes dx and, where deps_out is not NULL, d_eps as float32 (the caller's tensor: no Python float, no tensor
 * built after the call, when the caches are cold); returns d_eps in double. */
double eafo_backward(const float *restrict x, const float *restrict dy, float *restrict dx, int64_t n,
                     const float *eps_at, int threads, float *deps_out) {
    const float eps = *eps_at;
    int64_t chunks = (n + CHUNK - 1) / CHUNK;
    /* Chunk sums on the stack up to 2^25 elements: no heap allocation per call. */
    double local[4096];
    double *sums = chunks <= 4096 ? local : (double *)malloc((size_t)chunks * sizeof(double));
    if (sums == NULL) {
        if (deps_out != NULL) *deps_out = __builtin_nanf("");
        return __builtin_nan("");
    }
#pragma omp parallel for schedule(static) num_threads(workers(n, threads))
    for (int64_t c = 0; c < chunks; ++c) {
        int64_t lo = c * CHUNK, hi = lo + CHUNK < n ? lo + CHUNK : n;
        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
        for (int64_t i = lo; i < hi; ++i) {
            float xi = x[i], gi = dy[i];
            float g = gauss(xi);
            fdf b = base_f(xi, g);
            float t = xi * (ALPHA) + (BETA);
            float p = coefs[DEGREE], dp = 0.0f;
#pragma GCC unroll 32
            for (int j = DEGREE - 1; j >= 0; --j) {
                dp = dp * t + p;
                p = p * t + coefs[j];
            }
            float u = xi - (A), d = xi - (M);
            float env = envelope(xi, g);
            int inside = (xi > (A)) & (xi < (B));
            float h = upow(u) * env * p;
            float dh = env * upow_minus1(u) * ((float)POWER * p + u * ((ALPHA) * dp + (2.0f * (C)) * d * p));
            h = inside ? h : 0.0f;
            dh = inside ? dh : 0.0f;
            dx[i] = gi * (b.df + eps * dh);
            acc += gi * h;
        }
        sums[c] = (double)acc;
    }
    double total = 0.0;
    for (int64_t c = 0; c < chunks; ++c) total += sums[c];
    if (sums != local) free(sums);
    if (deps_out != NULL) *deps_out = (float)total;
    return total;
}
